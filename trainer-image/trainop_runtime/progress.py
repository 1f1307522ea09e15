"""progress.json: what the metrics sidecar and the operator read about training.

Each pod's LOCAL_RANK 0 writes it into the run dir, atomically (tmp + rename) and
at most about once a second, so a sidecar scraping at any moment reads a whole
object and training does not pay for a write per step.

``restarts`` is the pod's agent's count of in-place restarts (torchrun's
``TORCHELASTIC_RESTART_COUNT``), the number the operator and the local runner charge
to ``backoffLimit``. The launcher writes it before each worker starts
(:func:`report_restarts`), so a script that never reports progress is counted too;
the helpers' reports repeat the same number.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from trainop_runtime import contract
from trainop_runtime._fs import atomic_write_bytes


def build_progress(
    *,
    step: int,
    total_steps: int | None,
    samples: int,
    loss: float | None,
    step_seconds: float | None,
    samples_per_second: float | None,
    restarts: int,
    world_size: int,
    checkpoint_step: int | None,
    checkpoint_time: float | None,
    now: float,
) -> dict[str, Any]:
    """The progress object. Purely computational; unknown values are left out."""
    doc: dict[str, Any] = {
        contract.P_STEP: step,
        contract.P_TOTAL_STEPS: total_steps,
        contract.P_SAMPLES: samples,
        contract.P_RESTARTS: restarts,
        contract.P_WORLD_SIZE: world_size,
        contract.P_TIME: now,
    }
    optional = {
        contract.P_LOSS: loss,
        contract.P_STEP_SECONDS: step_seconds,
        contract.P_SAMPLES_PER_SECOND: samples_per_second,
        contract.P_CHECKPOINT_STEP: checkpoint_step,
        contract.P_CHECKPOINT_TIME: checkpoint_time,
    }
    doc.update({k: v for k, v in optional.items() if v is not None})
    return doc


class ProgressReporter:
    """Rate-limited writer of progress.json; a no-op unless ``enabled``."""

    def __init__(
        self,
        path: Path,
        *,
        enabled: bool,
        total_steps: int | None,
        restarts: int,
        min_interval: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.enabled = enabled
        self.total_steps = total_steps
        self.restarts = restarts
        self.min_interval = min_interval
        self._clock = clock
        self._last_write: float | None = None
        self._last_samples: int | None = None

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] = os.environ, *, total_steps: int | None
    ) -> ProgressReporter:
        run_dir = Path(env.get(contract.ENV_RUN_DIR, contract.DEFAULT_RUN_DIR))
        return cls(
            run_dir / contract.PROGRESS_FILE,
            enabled=env.get("LOCAL_RANK", "0") == "0",
            total_steps=total_steps,
            restarts=int(env.get("TORCHELASTIC_RESTART_COUNT", "0")),
        )

    def due(self) -> bool:
        """Whether a report would be written now: lets callers skip costly reads (loss.item())."""
        if not self.enabled:
            return False
        return self._last_write is None or self._clock() - self._last_write >= self.min_interval

    def report(
        self,
        *,
        step: int,
        samples: int,
        loss: float | None,
        step_seconds: float | None,
        world_size: int,
        checkpoint_step: int | None,
        checkpoint_time: float | None,
        force: bool = False,
    ) -> bool:
        if not self.enabled or not (force or self.due()):
            return False
        now = self._clock()
        rate = None
        last, last_samples = self._last_write, self._last_samples
        if last is not None and last_samples is not None and now > last:
            rate = (samples - last_samples) / (now - last)
        doc = build_progress(
            step=step,
            total_steps=self.total_steps,
            samples=samples,
            loss=loss,
            step_seconds=step_seconds,
            samples_per_second=rate,
            restarts=self.restarts,
            world_size=world_size,
            checkpoint_step=checkpoint_step,
            checkpoint_time=checkpoint_time,
            now=now,
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Not durable: the run dir is an emptyDir read live by the sidecar; after a
        # crash the next report replaces it anyway.
        atomic_write_bytes(self.path, json.dumps(doc).encode(), durable=False)
        self._last_write = now
        self._last_samples = samples
        return True


def with_restarts(doc: Mapping[str, Any] | None, restarts: int) -> dict[str, Any]:
    """``doc`` (the last report, if any) with this incarnation's restart count. Pure.

    Nothing else changes: the step and time stay the last worker's, so a reader still
    sees when training itself last reported.
    """
    return {**(doc or {}), contract.P_RESTARTS: restarts}


def report_restarts(env: Mapping[str, str] = os.environ) -> None:
    """Record the agent's restart count in progress.json, as a worker starts.

    Called by the launcher's worker client before the program runs, on LOCAL_RANK 0
    only. No local worker is running then (torchrun stops the whole group before
    it restarts it), so nothing else writes the file at the same time. Best effort:
    a full disk must not stop training.
    """
    if env.get("LOCAL_RANK", "0") != "0":
        return
    try:
        restarts = int(env.get("TORCHELASTIC_RESTART_COUNT", "0"))
    except ValueError:
        return
    if restarts <= 0:
        return  # an absent count reads as 0
    path = Path(env.get(contract.ENV_RUN_DIR, contract.DEFAULT_RUN_DIR)) / contract.PROGRESS_FILE
    last: Any = None
    with contextlib.suppress(OSError, ValueError):
        last = json.loads(path.read_text())
    doc = with_restarts(last if isinstance(last, dict) else None, restarts)
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, json.dumps(doc).encode(), durable=False)

"""The trainer's progress report (progress.json): parse and judge it, no I/O.

The keys are the runtime contract's ``P_*`` constants. A report can be
missing (trainer not started yet), torn or malformed (not JSON, or not an
object), or stale (the trainer stopped writing: hung, or dead and not yet
restarted). In all three cases ``trainop_training_up`` is 0 and the last
values are withheld, so a dashboard shows a gap rather than a frozen step
count that looks like a live job.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from trainop_runtime import contract


@dataclass(frozen=True)
class Progress:
    """One report; None means the trainer did not report that value (yet)."""

    step: int | None = None
    total_steps: int | None = None
    samples: int | None = None
    loss: float | None = None
    step_seconds: float | None = None
    samples_per_second: float | None = None
    restarts: int | None = None
    world_size: int | None = None
    checkpoint_step: int | None = None
    checkpoint_time: float | None = None
    time: float | None = None


def _int(doc: dict[str, object], key: str, rejected: list[str]) -> int | None:
    raw = doc.get(key)
    # bool is an int subclass; `true` as a step count is a bug upstream.
    if raw is None or (isinstance(raw, int) and not isinstance(raw, bool)):
        return raw
    rejected.append(key)
    return None


def _float(
    doc: dict[str, object], key: str, rejected: list[str], *, nan_ok: bool = False
) -> float | None:
    raw = doc.get(key)
    if raw is None:
        return None
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        number = float(raw)
        if math.isfinite(number) or nan_ok:
            return number
    rejected.append(key)
    return None


def parse_progress(text: str) -> tuple[Progress, tuple[str, ...]]:
    """Parse a report. Returns it with the keys ignored for a wrong type.

    Raises ``ValueError`` when the text is not a JSON object (e.g. torn).
    Unknown keys are accepted silently: a newer runtime may report more.
    """
    doc = json.loads(text)
    if not isinstance(doc, dict):
        raise ValueError("progress report is not a JSON object")
    bad: list[str] = []
    c = contract
    progress = Progress(
        step=_int(doc, c.P_STEP, bad),
        total_steps=_int(doc, c.P_TOTAL_STEPS, bad),
        samples=_int(doc, c.P_SAMPLES, bad),
        # A NaN loss is news (divergence) and is exported as NaN; a NaN time is junk.
        loss=_float(doc, c.P_LOSS, bad, nan_ok=True),
        step_seconds=_float(doc, c.P_STEP_SECONDS, bad),
        samples_per_second=_float(doc, c.P_SAMPLES_PER_SECOND, bad),
        restarts=_int(doc, c.P_RESTARTS, bad),
        world_size=_int(doc, c.P_WORLD_SIZE, bad),
        checkpoint_step=_int(doc, c.P_CHECKPOINT_STEP, bad),
        checkpoint_time=_float(doc, c.P_CHECKPOINT_TIME, bad),
        time=_float(doc, c.P_TIME, bad),
    )
    return progress, tuple(bad)


# The trainer writes a report after every step, at most once a second
# (trainop_runtime.progress): a minute of silence is a hung or dead trainer,
# or a pause longer than that (a synchronous checkpoint, an eval), which is
# when to raise --stale-after.
DEFAULT_STALE_SECONDS = 60.0
# A job whose steps outlast --stale-after must not flap to "stale" between
# two reports: it gets this many of its own steps of silence.
STALE_AFTER_STEPS = 3


@dataclass(frozen=True)
class TrainingView:
    """What to export about training on this scrape."""

    up: bool
    progress: Progress | None  # None: withhold every value
    report_time: float | None  # when the trainer last reported (unix seconds)
    reason: str  # for the log: why `up` is what it is


def assess_progress(
    progress: Progress | None,
    *,
    file_mtime: float | None,
    now: float,
    stale_after: float,
) -> TrainingView:
    """Decide freshness. Purely computational.

    The report's own ``time`` wins over the file's mtime (a copied or
    restored file keeps an old ``time`` but a new mtime). A report is stale
    when older than ``stale_after`` or ``STALE_AFTER_STEPS`` of its own step
    durations, whichever is longer.
    """
    if progress is None:
        return TrainingView(up=False, progress=None, report_time=file_mtime, reason="no report")
    report_time = progress.time if progress.time is not None else file_mtime
    limit = max(stale_after, STALE_AFTER_STEPS * (progress.step_seconds or 0.0))
    if report_time is not None and now - report_time > limit:
        age = now - report_time
        return TrainingView(
            up=False,
            progress=None,
            report_time=report_time,
            reason=f"last report is {age:.0f} s old (stale after {limit:.0f} s)",
        )
    return TrainingView(up=True, progress=progress, report_time=report_time, reason="fresh")

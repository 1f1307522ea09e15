"""Sharded checkpoints with ``torch.distributed.checkpoint`` (DCP), for FSDP / DTensor state.

When model and optimizer state is *sharded*, no rank holds the whole of it, so the
single-writer files of :mod:`trainop_runtime.checkpoint` cannot hold it either:
every rank writes its own shard, and loading reshards onto whatever world size the
job has now. That is what DCP does, so this path uses it, with the same
:class:`~trainop_runtime.checkpoint.CheckpointPolicy` and the same directory:

    step_000000040.dcp/   __0_0.distcp, __1_0.distcp, .metadata (DCP) and COMMITTED

A step counts only once ``COMMITTED`` is there. DCP's coordinator (rank 0) writes
``.metadata`` after every rank reported its shard written, and rank 0 writes the
marker after that; a step dir without it is torn (a rank was killed mid-save) and
is skipped on resume, then deleted by rank 0 before anyone saves again.

Periodic saves use ``dcp.async_save``: a rank blocks only while its shard is copied
to host memory. Its collectives run on a background thread, so they get a gloo
group of their own, never the one training issues collectives on. The final save
(end of training, SIGTERM) is synchronous, like the single-file path's.
"""

from __future__ import annotations

import logging
import re
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import torch.distributed as dist
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load
from torch.distributed.checkpoint.state_dict_saver import async_save as dcp_async_save
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save
from torch.distributed.distributed_c10d import ProcessGroup

from trainop_runtime._fs import atomic_write_bytes
from trainop_runtime.checkpoint import CheckpointPolicy

logger = logging.getLogger(__name__)

COMMIT_MARKER = "COMMITTED"
_NAME = re.compile(r"^step_(\d{9})\.dcp$")


def sharded_name(step: int) -> str:
    return f"step_{step:09d}.dcp"


class ShardedCheckpointDir:
    """The step dirs of one job's sharded checkpoints; only rank 0 commits and deletes."""

    def __init__(self, directory: Path, *, keep: int = 3) -> None:
        self.directory = directory
        self.keep = keep

    def path(self, step: int) -> Path:
        return self.directory / sharded_name(step)

    def _steps(self) -> list[int]:
        if not self.directory.is_dir():
            return []
        found = (_NAME.match(p.name) for p in self.directory.iterdir() if p.is_dir())
        return sorted((int(m.group(1)) for m in found if m), reverse=True)

    def committed_steps(self) -> list[int]:
        """Steps whose every shard is durable, newest first."""
        return [s for s in self._steps() if (self.path(s) / COMMIT_MARKER).exists()]

    def torn_steps(self) -> list[int]:
        return [s for s in self._steps() if not (self.path(s) / COMMIT_MARKER).exists()]

    def commit(self, step: int) -> None:
        atomic_write_bytes(self.path(step) / COMMIT_MARKER, b"", durable=True)
        for old in self.committed_steps()[self.keep :]:
            shutil.rmtree(self.path(old), ignore_errors=True)

    def remove_torn(self) -> None:
        for step in self.torn_steps():
            logger.info("removing %s: a rank was killed before every shard was saved", step)
            shutil.rmtree(self.path(step), ignore_errors=True)


class ShardedCheckpointer:
    """Schedule + step dirs + DCP. Every rank calls every method (they are collective)."""

    def __init__(
        self,
        directory: ShardedCheckpointDir,
        policy: CheckpointPolicy,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory = directory
        self.policy = policy
        self._clock = clock
        self._rank = dist.get_rank()
        # async_save's collectives run on its thread: a group of their own.
        group = dist.new_group(backend="gloo")
        if not isinstance(group, ProcessGroup):
            raise RuntimeError("this rank is not in the default process group")
        self._group = group
        self._last_step = 0
        self._last_time = clock()
        self._pending: tuple[Future[Any], threading.Event, list[BaseException]] | None = None
        self.durable_step: int | None = None

    def resume(self, state: dict[str, Any]) -> int | None:
        """Load the newest committed step into ``state`` in place (resharding); its step or None."""
        committed = self.directory.committed_steps()
        step = committed[0] if committed else None
        if step is not None:
            dcp_load(state, checkpoint_id=self.directory.path(step), process_group=self._group)
            self._last_step = self.durable_step = step
        if self._rank == 0:
            self.directory.remove_torn()
        # Torn dirs are gone before any rank can start saving into one.
        dist.barrier(group=self._group)
        self._last_time = self._clock()
        return step

    def maybe_save(self, step: int, state_fn: Callable[[], Mapping[str, Any]]) -> bool:
        if not self.policy.due(
            step=step, last_step=self._last_step, now=self._clock(), last_time=self._last_time
        ):
            return False
        self._mark(step)
        self.wait()  # one save in flight at most, as in the single-file path
        future = dcp_async_save(
            dict(state_fn()), checkpoint_id=self.directory.path(step), process_group=self._group
        )
        if not isinstance(future, Future):
            raise TypeError(f"dcp.async_save returned {type(future).__name__}, not a Future")
        committed = threading.Event()
        errors: list[BaseException] = []

        def commit(done: Future[Any]) -> None:
            # As soon as it is durable, not at the next save: a kill in between
            # must not cost this step.
            try:
                if done.exception() is None:
                    self._committed(step)
            except BaseException as e:  # raised by wait() on the training thread
                errors.append(e)
            finally:
                committed.set()

        future.add_done_callback(commit)
        self._pending = (future, committed, errors)
        return True

    def save_now(self, step: int, state_fn: Callable[[], Mapping[str, Any]]) -> None:
        """Save synchronously; an earlier async failure is logged, not raised (see checkpoint)."""
        self._mark(step)
        try:
            self.wait()
        except Exception:
            logger.exception("an earlier async sharded save failed; saving step %d anyway", step)
        if self.durable_step == step:
            return
        dcp_save(
            dict(state_fn()), checkpoint_id=self.directory.path(step), process_group=self._group
        )
        self._committed(step)

    def wait(self) -> None:
        """Block until the in-flight save (if any) is committed; re-raise its failure."""
        if self._pending is None:
            return
        future, committed, errors = self._pending
        self._pending = None
        committed.wait()  # the callback runs after result() can already return
        future.result()
        if errors:
            raise RuntimeError(f"sharded checkpoint saved but not committed: {errors[0]}")

    def _committed(self, step: int) -> None:
        # dcp.save/async_save returns once the coordinator wrote .metadata, after
        # every rank reported its shard written: rank 0 may commit.
        if self._rank == 0:
            self.directory.commit(step)
        self.durable_step = step

    def _mark(self, step: int) -> None:
        self._last_step = step
        self._last_time = self._clock()

"""Checkpoints: atomic, verifiable, resumable, saved on a schedule or on demand.

Layout: one file per step, ``step_<9 digits>.ckpt``, in the (shared) checkpoint
directory. A file is a small header (magic, payload length, SHA-256) followed by
a ``torch.save`` payload, so a torn or corrupted file is detected on load and the
next older one is used instead.

Why not ``torch.distributed.checkpoint`` (DCP) here: the example trains with DDP,
whose model and optimizer state is replicated, identical on every rank. DCP pays
when state is *sharded* (FSDP, tensor parallel): each rank writes its own shard and
loading reshards to a new world size. For replicated state DCP deduplicates down to
what this module does anyway, one writer with the full state, and its per-rank
metadata and collective planning only add latency, on the save that must finish
inside a SIGTERM grace period too. World-size changes are free here because the
state is not sharded. Sharded state uses :mod:`trainop_runtime.sharded` instead:
DCP with the same :class:`CheckpointPolicy`, in the same directory.

What does pay is asynchrony: a periodic save only blocks for a copy of the state
to host memory; serialising, writing and fsyncing happen on a background thread
while training goes on. The final save (end of training, SIGTERM) is synchronous.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import logging
import os
import re
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trainop_runtime import contract
from trainop_runtime._fs import atomic_write_bytes, temp_path

logger = logging.getLogger(__name__)

_MAGIC = b"TRNOPCK1"
# magic, header length (uint32, big endian), then the JSON header, then the payload.
_PREFIX = struct.Struct(">8sI")
_NAME = re.compile(r"^step_(\d{9})\.ckpt$")
# What atomic_write_bytes stages a checkpoint in (``_fs.temp_path``): a writer killed
# mid-save (SIGKILL, OOM, a lost node) leaves one behind, as big as a checkpoint.
_TEMP = re.compile(r"^\.step_\d{9}\.ckpt\.tmp\.\d+$")

# Temp files that a save in this process is writing right now, by any CheckpointDir.
_in_flight: set[Path] = set()
_in_flight_lock = threading.Lock()

StateDict = dict[str, Any]

# The causes a user can fix, each with the fix. The message lands in the termination
# log (status.lastFailure, the runner's summary), where a bare "checkpoint save failed"
# would send them digging through worker logs for the errno.
_FIXES = {
    errno.ENOSPC: "the checkpoint volume is full: free space or give it more",
    errno.EDQUOT: "the checkpoint volume's quota is used up: free space or raise the quota",
    errno.EACCES: "the trainer's user may not write there: fix the directory's owner or "
    "mode (on a cluster, podTemplate.spec.securityContext.fsGroup)",
    errno.EPERM: "the trainer's user may not write there: fix the directory's owner or mode",
    errno.EROFS: "the checkpoint volume is mounted read-only: mount it read-write",
}


class CheckpointError(RuntimeError):
    """A checkpoint could not be saved or read; the message names the cause and its fix."""


def explain(error: BaseException, directory: Path) -> str:
    """One line for a failed save or read of ``directory``. Purely computational."""
    if isinstance(error, OSError) and error.errno is not None:
        name = errno.errorcode.get(error.errno, str(error.errno))
        what = error.strerror or os.strerror(error.errno)
        fix = _FIXES.get(error.errno)
        return f"{what} ({name}) in {directory}" + (f": {fix}" if fix else "")
    return f"{type(error).__name__}: {error}"


@dataclass(frozen=True)
class CheckpointPolicy:
    """When a periodic checkpoint is due. Purely computational, no side effects."""

    every_steps: int | None = None
    every_seconds: float | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> CheckpointPolicy:
        steps = env.get(contract.ENV_CHECKPOINT_EVERY_STEPS, "").strip()
        seconds = env.get(contract.ENV_CHECKPOINT_EVERY_SECONDS, "").strip()
        return cls(
            every_steps=int(steps) if steps and int(steps) > 0 else None,
            every_seconds=float(seconds) if seconds and float(seconds) > 0 else None,
        )

    def due(self, *, step: int, last_step: int, now: float, last_time: float) -> bool:
        """Whether ``step`` (just completed) should be saved.

        ``last_step``/``last_time`` describe the last save (or the resume point).
        """
        if step <= last_step:
            return False
        if self.every_steps is not None and step - last_step >= self.every_steps:
            return True
        return self.every_seconds is not None and now - last_time >= self.every_seconds


@dataclass(frozen=True)
class Loaded:
    step: int
    state: StateDict
    path: Path


def checkpoint_name(step: int) -> str:
    return f"step_{step:09d}.ckpt"


def encode(state: Mapping[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save(dict(state), buf)
    payload = buf.getvalue()
    header = json.dumps(
        {"size": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
    ).encode()
    return _PREFIX.pack(_MAGIC, len(header)) + header + payload


class CorruptCheckpointError(ValueError):
    pass


def decode(data: bytes, *, map_location: str | None = None) -> StateDict:
    """Parse a checkpoint file's bytes; raise :class:`CorruptCheckpointError` if torn."""
    if len(data) < _PREFIX.size:
        raise CorruptCheckpointError("shorter than the header")
    magic, header_len = _PREFIX.unpack_from(data)
    if magic != _MAGIC:
        raise CorruptCheckpointError("bad magic")
    start = _PREFIX.size + header_len
    try:
        header = json.loads(data[_PREFIX.size : start])
    except ValueError as e:
        raise CorruptCheckpointError(f"unreadable header: {e}") from e
    payload = data[start:]
    if len(payload) != header["size"]:
        raise CorruptCheckpointError(f"payload is {len(payload)} bytes, expected {header['size']}")
    if hashlib.sha256(payload).hexdigest() != header["sha256"]:
        raise CorruptCheckpointError("checksum mismatch")
    # weights_only: a checkpoint directory may be shared; never run pickled code from it.
    state: StateDict = torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    return state


class CheckpointDir:
    """The files of one job's checkpoints. Safe with several writers of the same step."""

    def __init__(self, directory: Path, *, keep: int = 3) -> None:
        self.directory = directory
        self.keep = keep

    def steps(self) -> list[int]:
        """Steps with a checkpoint file, newest first (validity not checked)."""
        if not self.directory.is_dir():
            return []
        found = (_NAME.match(p.name) for p in self.directory.iterdir())
        return sorted((int(m.group(1)) for m in found if m), reverse=True)

    def write(self, step: int, data: bytes) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / checkpoint_name(step)
        with _writing(temp_path(path)):
            atomic_write_bytes(path, data, durable=True)
        self._prune()
        return path

    def save(self, step: int, state: Mapping[str, Any]) -> Path:
        return self.write(step, encode(state))

    def load_latest(self, *, map_location: str | None = None) -> Loaded | None:
        """The newest checkpoint that verifies; torn or corrupt ones are skipped (logged)."""
        for step in self.steps():
            path = self.directory / checkpoint_name(step)
            try:
                state = decode(path.read_bytes(), map_location=map_location)
            except (OSError, CorruptCheckpointError) as e:
                logger.warning("skipping checkpoint %s: %s", path, e)
                continue
            return Loaded(step=step, state=state, path=path)
        return None

    def remove_stale_temps(self) -> list[Path]:
        """Delete temp files of killed writers; return them. Never one this process is writing.

        Call it from the writer only. A job has one writer at a time (global rank 0
        of the current worker group), and torchrun stops a group before the next one
        forms, so a temp file that no save of this process is writing belongs to a
        dead writer. Its pid cannot tell: pods have their own pid namespaces, so a
        live pid here says nothing about a file written from another pod.
        """
        if not self.directory.is_dir():
            return []
        with _in_flight_lock:
            stale = [
                p
                for p in self.directory.iterdir()
                if _TEMP.match(p.name) and p.resolve() not in _in_flight
            ]
        for p in stale:
            with contextlib.suppress(OSError):
                size = p.stat().st_size
                p.unlink()
                logger.info("removed %s (%d bytes), left by a writer killed mid-save", p, size)
        return stale

    def _prune(self) -> None:
        for step in self.steps()[self.keep :]:
            # Another writer may prune the same file at the same time.
            (self.directory / checkpoint_name(step)).unlink(missing_ok=True)
        self.remove_stale_temps()


@contextlib.contextmanager
def _writing(tmp: Path) -> Iterator[None]:
    """Mark ``tmp`` as being written by this process, so no prune removes it meanwhile."""
    key = tmp.resolve()  # the same file, however the directory was spelled
    with _in_flight_lock:
        _in_flight.add(key)
    try:
        yield
    finally:
        with _in_flight_lock:
            _in_flight.discard(key)


def snapshot_to_cpu(obj: Any) -> Any:
    """A deep copy of ``obj`` with its tensors in host memory, safe from in-place updates."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, Mapping):
        return {k: snapshot_to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(snapshot_to_cpu(v) for v in obj)
    return obj


class Checkpointer:
    """Schedule + directory + a background writer. Only the writer rank writes.

    ``state_fn`` is called only when a save happens, so building the state dict
    costs nothing on steps that are not saved.
    """

    def __init__(
        self,
        directory: CheckpointDir,
        policy: CheckpointPolicy,
        *,
        is_writer: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory = directory
        self.policy = policy
        self.is_writer = is_writer
        self._clock = clock
        self._last_step = 0
        self._last_time = clock()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        # Step and wall time of the newest checkpoint known durable (progress reports).
        self.durable_step: int | None = None
        self.durable_time: float | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ, *, is_writer: bool) -> Checkpointer:
        directory = Path(env.get(contract.ENV_CHECKPOINT_DIR, contract.DEFAULT_CHECKPOINT_DIR))
        return cls(CheckpointDir(directory), CheckpointPolicy.from_env(env), is_writer=is_writer)

    def resume(self, *, map_location: str | None = None) -> Loaded | None:
        """Load the newest valid checkpoint (every rank reads it) and restart the schedule.

        The writer also deletes what killed writers left half-written (see
        :meth:`CheckpointDir.remove_stale_temps`): otherwise every kill mid-save would
        leak one checkpoint's worth of disk for good.
        """
        try:
            if self.is_writer:
                self.directory.remove_stale_temps()
            loaded = self.directory.load_latest(map_location=map_location)
        except OSError as e:  # the directory itself: unreadable (EACCES), gone...
            raise CheckpointError(
                f"checkpoint resume failed: {explain(e, self.directory.directory)}"
            ) from e
        if loaded is not None:
            self._last_step = loaded.step
            self.durable_step = loaded.step
            self.durable_time = loaded.path.stat().st_mtime
        self._last_time = self._clock()
        return loaded

    def maybe_save(self, step: int, state_fn: Callable[[], Mapping[str, Any]]) -> bool:
        """Start an asynchronous save of ``step`` if the policy says it is due."""
        if not self.policy.due(
            step=step, last_step=self._last_step, now=self._clock(), last_time=self._last_time
        ):
            return False
        self._mark(step)
        if self.is_writer:
            # One save in flight at most: a slow disk slows training instead of
            # piling up snapshots in host memory.
            self.wait()
            snapshot = snapshot_to_cpu(dict(state_fn()))
            self._thread = threading.Thread(
                target=self._write, args=(step, snapshot), name="trainop-ckpt", daemon=True
            )
            self._thread.start()
        return True

    def save_now(self, step: int, state_fn: Callable[[], Mapping[str, Any]]) -> None:
        """Save synchronously (end of training, SIGTERM): durable when this returns.

        An earlier async save that failed is logged, not raised: this save is the one
        the job resumes from, and a disk that failed once (full, a network blip) may
        take it. A failure of this save itself is raised.
        """
        self._mark(step)
        if self.is_writer:
            earlier = self._join()
            if earlier is not None:
                logger.error(
                    "an earlier async checkpoint save failed; writing step %d anyway",
                    step,
                    exc_info=earlier,
                )
            if self.durable_step == step:
                return
            self._write(step, dict(state_fn()))
            self.wait()

    def wait(self) -> None:
        """Block until the in-flight save (if any) is durable; re-raise its failure."""
        error = self._join()
        if error is not None:
            raise CheckpointError(
                f"checkpoint save failed: {explain(error, self.directory.directory)}"
            ) from error

    def _join(self) -> BaseException | None:
        """Wait for the in-flight save; return (and forget) the failure of the last one."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        error, self._error = self._error, None
        return error

    def _mark(self, step: int) -> None:
        self._last_step = step
        self._last_time = self._clock()

    def _write(self, step: int, state: Mapping[str, Any]) -> None:
        started = time.monotonic()
        try:
            path = self.directory.save(step, state)
        except BaseException as e:  # surfaced by wait() on the training thread
            self._error = e
            return
        self.durable_step = step
        self.durable_time = time.time()
        logger.info("checkpoint %s saved in %.3f s", path, time.monotonic() - started)

"""Atomic file writes shared by checkpoints, progress and gpus.json."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def temp_path(path: Path) -> Path:
    """Where :func:`atomic_write_bytes` stages ``path``: hidden, next to it, named by this pid."""
    return path.with_name(f".{path.name}.tmp.{os.getpid()}")


def atomic_write_bytes(path: Path, data: bytes, *, durable: bool) -> None:
    """Replace ``path`` with ``data`` so readers see the old file or the new one, never half.

    ``durable`` adds the fsyncs that make the new content survive a power loss or a
    node crash (checkpoints); files on a tmpfs read by a sidecar (progress) skip them.
    """
    tmp = temp_path(path)
    try:
        with tmp.open("wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if durable:
        fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Persist a rename: on ext4/xfs the new directory entry is only durable after this."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

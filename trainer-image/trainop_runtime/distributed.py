"""Worker side: process-group setup that survives in-place restarts, and graceful stop.

:func:`init_distributed` replaces ``init_process_group("env://")``: it attaches
to the same bootstrap store torchrun would, but under a key prefix unique to the
rendezvous round (see :mod:`trainop_runtime.rendezvous` for the cause), so a new
incarnation never reads the addresses of a dead one.

:class:`GracefulStop` turns SIGTERM into a checkpoint at a step every rank agrees
on, without a blocking collective per step.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from types import FrameType
from typing import Any

import torch
import torch.distributed as dist

# Re-exported by torch.distributed inside `if is_available():`, which mypy does not
# count as an explicit export.
from torch.distributed import (  # type: ignore[attr-defined]
    HashStore,
    PrefixStore,
    TCPStore,
)

from trainop_runtime import contract

logger = logging.getLogger(__name__)


def attempt_prefix(env: Mapping[str, str]) -> str | None:
    """The store key prefix for this incarnation, or None when none is agreed.

    Purely computational. The launcher's round-agreed id wins. Without it (plain
    torchrun), a single agent's restart count is agreed trivially; with several
    agents no local value is, and a wrong prefix would hang, so none is used.
    """
    attempt = env.get(contract.ENV_ATTEMPT_ID, "").strip()
    if attempt:
        return f"trainop/attempt/{attempt}/"
    if env.get("GROUP_WORLD_SIZE", "1") == "1":
        return f"trainop/restart/{env.get('TORCHELASTIC_RESTART_COUNT', '0')}/"
    return None


def _prewarm_ddp_imports() -> None:
    """Import torch._dynamo on a thread while this rank waits for its peers.

    DDP's constructor imports it (for ``optimize_ddp``), which is seconds of CPU on
    a busy node: on the critical path of every restart unless it overlaps the
    wait in ``init_process_group``. Python's per-module import locks make the later
    import in the main thread wait for this one rather than run twice.
    """
    threading.Thread(
        target=importlib.import_module, args=("torch._dynamo",), name="trainop-prewarm", daemon=True
    ).start()


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    backend: str
    device: torch.device
    # A gloo group for small CPU-side control messages (stop flags), so they never
    # force a GPU sync. None means "use the default group" (already gloo).
    control_group: Any


def init_distributed(
    backend: str | None = None,
    *,
    timeout: timedelta = timedelta(seconds=120),
    use_attempt_prefix: bool = True,
) -> DistContext:
    """Initialise the default process group from torchrun's env, with the attempt prefix.

    ``timeout`` bounds every collective: it is how long survivors wait for a peer
    that vanished without closing its sockets (a dead node) before they fail and
    their agent re-rendezvouses. Without torchrun (no ``RANK``) a world of one is
    set up, so the same program runs on a laptop. ``use_attempt_prefix=False``
    reproduces plain ``init_process_group("env://")`` key naming, for comparisons.
    """
    _prewarm_ddp_imports()
    env = os.environ
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    local_rank = int(env.get("LOCAL_RANK", "0"))
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")

    if "RANK" not in env:
        dist.init_process_group(backend, store=HashStore(), rank=0, world_size=1)
        control = None if backend == "gloo" else dist.new_group(backend="gloo")
        return DistContext(0, 1, 0, 1, backend, device, control)

    rank = int(env["RANK"])
    world_size = int(env["WORLD_SIZE"])
    # Same choice as torch's env:// handler: the agent serves the store, or rank 0 does.
    agent_serves = env.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store: Any = TCPStore(
        env["MASTER_ADDR"],
        int(env["MASTER_PORT"]),
        world_size,
        is_master=not agent_serves and rank == 0,
        timeout=timeout,
        wait_for_workers=False,
        multi_tenant=True,
    )
    prefix = attempt_prefix(env) if use_attempt_prefix else None
    if prefix is None and use_attempt_prefix:
        logger.warning(
            "no %s from the launcher: in-place restarts may read stale peer addresses",
            contract.ENV_ATTEMPT_ID,
        )
    if prefix is not None:
        store = PrefixStore(prefix, store)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=timeout)
    control = None if backend == "gloo" else dist.new_group(backend="gloo", timeout=timeout)
    return DistContext(
        rank=rank,
        world_size=world_size,
        local_rank=local_rank,
        local_world_size=int(env.get("LOCAL_WORLD_SIZE", "1")),
        backend=backend,
        device=device,
        control_group=control,
    )


class GracefulStop:
    """SIGTERM/SIGINT -> every rank stops after the same step, then checkpoints.

    The handler only sets a flag. Each step every rank calls :meth:`poll`, which
    starts an asynchronous all-reduce of its flag and waits for the *previous*
    step's: all ranks see the same sums in the same order, so they agree on the
    stop step, one step after the first signal, at no blocking cost per step.
    """

    def __init__(self, control_group: Any = None, *, peer_wait: float = 3.0) -> None:
        self.control_group = control_group
        self.peer_wait = peer_wait
        self._signum: int | None = None
        self._signalled = threading.Event()
        self._pending: tuple[Any, Any] | None = None
        self.signal_time: float | None = None

    def install(self) -> GracefulStop:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        return self

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._signum is None:
            self._signum = signum
            self.signal_time = time.time()
        self._signalled.set()

    @property
    def signalled(self) -> bool:
        return self._signalled.is_set()

    def poll(self) -> bool:
        """Collective: True on every rank once any rank was signalled (one step late)."""
        stop = False
        if self._pending is not None:
            work, flag = self._pending
            work.wait()
            stop = bool(flag.item() > 0)
        if stop:
            self._pending = None
            return True
        flag = torch.tensor([1 if self.signalled else 0], dtype=torch.int32)
        work = dist.all_reduce(flag, group=self.control_group, async_op=True)
        self._pending = (work, flag)
        return False

    def drain(self) -> None:
        """Wait for the last in-flight poll, so no collective is left half-issued."""
        if self._pending is not None:
            self._pending[0].wait()
            self._pending = None

    def exit_code(self) -> int:
        """How this worker should exit once the agreed checkpoint is durable.

        A worker that was itself signalled exits 128+N like a killed process. One
        that was not (a peer's pod is going away) waits briefly for its own agent's
        SIGTERM, which comes when the agent restarts the group for a membership
        change; if none comes it exits EXIT_PEER_STOPPED so its agent re-rendezvouses.
        """
        if self._signalled.wait(timeout=0 if self.signalled else self.peer_wait):
            return 128 + (self._signum or signal.SIGTERM)
        return contract.EXIT_PEER_STOPPED

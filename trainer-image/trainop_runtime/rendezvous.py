"""Agent side of the stale-address fix: one attempt id and one bootstrap store per round.

Cause (torch 2.15, ``torch/distributed/rendezvous.py`` ``_create_c10d_store`` and
``elastic/rendezvous/dynamic_rendezvous.py`` ``next_rendezvous``): with TCP store
sharing (the default, ``TORCHELASTIC_USE_AGENT_STORE=True``), every worker becomes a
client of a store server that the group-rank-0 *agent* creates once and keeps for
its whole life. The worker side attaches with no per-attempt key prefix (the code
comment says "We create a new TCPStore for every retry", which stopped being true
when the server moved into the agent). ``init_process_group`` then uses fixed keys
under ``default_pg/``: after a worker is SIGKILLed and the group restarts in place,
a new worker can read the dead incarnation's gloo addresses (and its barrier
counters) before the new peer overwrites them, dial a dead port and fail, wasting
a restart.

Two more faults sit next to it. ``next_rendezvous`` caches the bootstrap store's
address from its *first* round and only rebuilds it when this agent becomes rank 0
without a server: an agent that was rank 0 and is now rank 1 (a rejoin re-sorts the
members) keeps pointing its workers at its *own* server, and with three agents a
survivor keeps pointing at the dead rank 0's. Either way the workers of one round
dial different stores and hang. And a *new* agent that joins as rank > 0 waits
inside ``RendezvousStoreInfo.build`` for ``MASTER_ADDR``/``MASTER_PORT`` keys that
a rank 0 with a cached address never writes again: scale-up deadlocks until the
store timeout (seen here: a rejoining pod hung 60 s, then both agents failed).

Fix: after torch's rendezvous, group rank 0 starts a *fresh* bootstrap store server
for the round and publishes its address with a random attempt id under a key of the
*round-scoped* rendezvous store (``torch.rendezvous.<run_id>.<round>``, new for every
round, so it cannot hold a stale value), plus torch's own address keys for a newcomer;
every agent reads them back and hands that address to its workers as ``MASTER_ADDR``/
``MASTER_PORT``. A new store has no keys, so any worker's ``env://`` init, a plain
script's included, can only meet this round's peers: no key prefix is needed for
correctness. The id still reaches the workers as ``TRAINOP_ATTEMPT_ID`` and
:func:`trainop_runtime.distributed.init_distributed` prefixes its keys with it, which
keeps the helpers safe under plain torchrun too. Agreement comes from the round, which
all members share, not from ``TORCHELASTIC_RESTART_COUNT``, which is each agent's own
count (a rejoined agent starts at 0).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

# Re-exported by torch.distributed inside `if is_available():`, which mypy does not
# count as an explicit export.
from torch.distributed import Store, TCPStore  # type: ignore[attr-defined]
from torch.distributed.elastic.rendezvous import (
    RendezvousHandler,
    RendezvousInfo,
    RendezvousParameters,
    dynamic_rendezvous,
    rendezvous_handler_registry,
)
from torch.distributed.elastic.rendezvous.api import RendezvousStoreInfo

from trainop_runtime import contract, liveness

# torchrun's ``--rdzv-backend`` for torch's c10d rendezvous plus this fix.
BACKEND = "trainop-c10d"
_AGREED_KEY = "trainop/bootstrap"
# Bootstrap servers kept alive: this round's and the one before, so a worker of the
# previous round that is still shutting down on another agent fails on its peers,
# not on a store that vanished under it.
_KEEP_SERVERS = 2
# torch's dynamic rendezvous reads the shared state at most once a second: a waiting
# agent sleeps a hard-coded second between polls (``_DistributedRendezvousOpExecutor.
# run``: ``_delay(seconds=1)`` on its SYNC action), and every read within a second of
# the last is served from a cache (``_BackendRendezvousStateHolder``, cache_duration=1),
# which is also how a healthy agent's monitor loop asks whether a replacement is
# waiting (``num_nodes_waiting``). Those seconds were most of every in-place restart
# (bench/recovery: 1.86 s of rendezvous out of 2.2 s for a worker kill). Small groups
# poll every 50 ms; the poll grows with the group and is torch's second from 100
# members up, so a round never asks its store for much more than 100 reads a second.
_POLL_MIN_SECONDS = 0.05
_READS_PER_SECOND_PER_ROUND = 100.0
_TORCH_POLL_SECONDS = 1


def poll_seconds(max_nodes: int) -> float:
    """How often an agent reads the rendezvous state while it waits or monitors."""
    return min(1.0, max(_POLL_MIN_SECONDS, max_nodes / _READS_PER_SECOND_PER_ROUND))


def shorten_poll(handler: RendezvousHandler, max_nodes: int) -> bool:
    """Make torch's rendezvous in this process poll, and cache what it read, for
    poll_seconds(max_nodes) instead of a second.

    False (torch's second kept) when torch no longer has what this replaces.
    """
    holder = getattr(handler, "_state_holder", None)
    torch_delay = getattr(dynamic_rendezvous, "_delay", None)
    if torch_delay is None or not hasattr(holder, "_cache_duration"):
        return False
    interval = poll_seconds(max_nodes)
    holder._cache_duration = interval  # type: ignore[union-attr]  # torch-private, see above
    original = getattr(torch_delay, "trainop_original", torch_delay)

    def delay(seconds: float | tuple[float, float]) -> None:
        # Only the SYNC poll asks for exactly one second; the CAS back-off passes a range.
        original(interval if seconds == _TORCH_POLL_SECONDS else seconds)

    delay.trainop_original = original  # type: ignore[attr-defined]  # re-patching keeps torch's
    dynamic_rendezvous._delay = delay  # type: ignore[attr-defined]  # torch-private, see above
    return True


def append_event(run_dir: Path | None, event: str, **fields: Any) -> None:
    """One line in agent-events.jsonl; best effort (a full disk must not stop training)."""
    if run_dir is None:
        return
    line = json.dumps({"event": event, "time": time.time(), "pid": os.getpid(), **fields})
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with (run_dir / contract.AGENT_EVENTS_FILE).open("a") as f:
            f.write(line + "\n")
    except OSError:
        pass


def agree_on_bootstrap(
    store: Store, rank: int, own: RendezvousStoreInfo | None
) -> tuple[str, RendezvousStoreInfo]:
    """Rank 0 publishes (attempt id, its bootstrap address); every rank returns what it published.

    ``store`` must be the round-scoped store from ``RendezvousInfo``.
    """
    if rank == 0:
        if own is None:
            raise RuntimeError("group rank 0 has no bootstrap store to share")
        doc = {"attempt": uuid.uuid4().hex, "addr": own.master_addr, "port": own.master_port}
        # torch's own keys, which a cached rank 0 no longer writes: a newcomer that
        # joins as rank > 0 blocks on them inside torch's next_rendezvous.
        store.set(RendezvousStoreInfo.MASTER_ADDR_KEY, own.master_addr)
        store.set(RendezvousStoreInfo.MASTER_PORT_KEY, str(own.master_port))
        store.set(_AGREED_KEY, json.dumps(doc))
    agreed = json.loads(store.get(_AGREED_KEY).decode())
    return str(agreed["attempt"]), RendezvousStoreInfo(str(agreed["addr"]), int(agreed["port"]))


class AgreedAttemptHandler(RendezvousHandler):
    """torch's c10d rendezvous, plus a per-round attempt id and bootstrap address agreed by all."""

    def __init__(self, inner: RendezvousHandler, run_dir: Path | None) -> None:
        self._inner = inner
        self._run_dir = run_dir
        self._rounds = 0
        self._servers: list[TCPStore] = []
        self.liveness: liveness.Liveness | None = None  # held for the agent's life

    def _fresh_server(self, addr: str) -> RendezvousStoreInfo:
        """A new, empty bootstrap store on a free port of this host, served by this agent."""
        # torch's own server for the shared store (dynamic_rendezvous._create_tcp_store_server).
        server = TCPStore(host_name=addr, port=0, is_master=True, multi_tenant=True)
        self._servers = [*self._servers, server][-_KEEP_SERVERS:]
        return RendezvousStoreInfo(addr, int(server.port))

    def get_backend(self) -> str:
        return BACKEND

    @property
    def use_agent_store(self) -> bool:
        return bool(self._inner.use_agent_store)

    def next_rendezvous(self) -> RendezvousInfo:
        started = time.time()
        append_event(self._run_dir, "rendezvous_start", round=self._rounds)
        info = self._inner.next_rendezvous()
        own = None
        if info.rank == 0:
            if info.bootstrap_store_info is None:
                raise RuntimeError("group rank 0 has no bootstrap address to serve on")
            # torch's cached info is this agent's own address when it is rank 0.
            own = self._fresh_server(info.bootstrap_store_info.master_addr)
        attempt, bootstrap = agree_on_bootstrap(info.store, info.rank, own)
        # The agent starts its workers right after this returns, and they inherit
        # os.environ: this is how the id reaches them without patching the agent.
        os.environ[contract.ENV_ATTEMPT_ID] = attempt
        append_event(
            self._run_dir,
            "rendezvous_end",
            round=self._rounds,
            started=started,
            group_rank=info.rank,
            group_world_size=info.world_size,
            attempt=attempt,
            master=f"{bootstrap.master_addr}:{bootstrap.master_port}",
        )
        self._rounds += 1
        if self.liveness is not None:
            self.liveness.confirm_round()
        return RendezvousInfo(info.store, info.rank, info.world_size, bootstrap)

    def is_closed(self) -> bool:
        return bool(self._inner.is_closed())

    def set_closed(self) -> None:
        self._inner.set_closed()  # type: ignore[no-untyped-call]  # unannotated in torch

    def num_nodes_waiting(self) -> int:
        return int(self._inner.num_nodes_waiting())

    def get_run_id(self) -> str:
        return str(self._inner.get_run_id())

    def shutdown(self) -> bool:
        # torch closes the rendezvous for good when an agent exits after its workers
        # failed (launcher/api.py, launch_agent's finally): every survivor's next
        # round and every replacement pod then die with RendezvousClosedError, so
        # one failed pod ends the whole elastic job (kubeflow/trainer#1638). Here the
        # operator owns the job's lifetime: it deletes the pods when the job ends and
        # starts a fresh rendezvous id on a RestartJob, so an agent never closes it.
        return True


def register(run_dir: Path | None) -> None:
    """Make ``--rdzv-backend trainop-c10d`` available to torchrun in this process."""

    def create(params: RendezvousParameters) -> RendezvousHandler:
        inner_params = RendezvousParameters(
            backend="c10d",
            endpoint=params.endpoint,
            run_id=params.run_id,
            min_nodes=params.min_nodes,
            max_nodes=params.max_nodes,
            local_addr=params.local_addr,
            **params.config,
        )
        inner = rendezvous_handler_registry.create_handler(inner_params)
        shorten_poll(inner, params.max_nodes)
        handler = AgreedAttemptHandler(inner, run_dir)
        store = getattr(inner, "_store", None)
        if store is not None:
            handler.liveness = liveness.install(inner, store, params.endpoint)
        return handler

    # The registry refuses a second, different creator under one name; a second
    # call in one process (tests) keeps the first.
    with contextlib.suppress(ValueError):
        rendezvous_handler_registry.register(BACKEND, create)

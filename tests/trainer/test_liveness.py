"""Telling a gone rendezvous member from a slow one: real sockets on 127.0.0.1, and
torch's own rendezvous state holder over a fake backend (no store process)."""

from __future__ import annotations

import pickle
import socket
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from torch.distributed.elastic.rendezvous import dynamic_rendezvous as dr

from trainop_runtime import liveness
from trainop_runtime.liveness import REDIAL_SECONDS, Evictor, Listener, dial_all

pytestmark = pytest.mark.torch


def closed_port() -> str:
    """An address where nothing listens any more: a process that is gone."""
    with socket.create_server(("127.0.0.1", 0)) as s:
        return f"127.0.0.1:{s.getsockname()[1]}"


def test_a_listening_agent_answers_and_a_gone_one_refuses() -> None:
    alive = Listener("127.0.0.1")
    gone = closed_port()
    try:
        assert dial_all([alive.address, gone, "not-an-address"], 1.0) == {
            alive.address: True,
            gone: False,
            "not-an-address": None,  # proves nothing: the heartbeat decides
        }
    finally:
        alive.close()


@pytest.mark.parametrize(
    ("published", "confirmed", "answers", "gone"),
    [
        # Reached after the round, refused now: gone.
        ({"a": "A", "b": "B"}, ["a", "b"], {"A": True, "B": False}, ["b"]),
        ({"a": "A"}, ["a"], {"A": None}, []),  # no answer in time: maybe only slow
        ({}, [], {}, []),  # an older agent that published nothing: its heartbeat decides
        # Never reached (a policy that rejects): a refusal proves nothing.
        ({"a": "A", "b": "B"}, ["a"], {"A": False, "B": False}, ["a"]),
    ],
)
def test_only_a_member_reached_before_and_refusing_now_is_gone(
    published: dict[str, str],
    confirmed: list[str],
    answers: dict[str, bool | None],
    gone: list[str],
) -> None:
    reached = {published[m] for m in confirmed}
    after_round = [True]

    def dial(addrs: Iterable[str], timeout: float) -> Mapping[str, bool | None]:
        if after_round[0]:
            return {a: a in reached for a in addrs}
        return {a: answers[a] for a in addrs}

    ev = Evictor(published.get, dial=dial)
    ev.confirm(["a", "b"])
    after_round[0] = False
    assert ev.gone(["a", "b"]) == gone


def test_a_member_is_dialled_at_most_once_per_redial_interval() -> None:
    now = [0.0]
    dialled: list[list[str]] = []

    def dial(addrs: Iterable[str], timeout: float) -> Mapping[str, bool | None]:
        dialled.append(list(addrs))
        return dict.fromkeys(dialled[-1], True)

    ev = Evictor({"a": "A"}.get, dial=dial, clock=lambda: now[0])
    ev.confirm(["a"])
    ev.gone(["a"])
    now[0] += REDIAL_SECONDS / 2
    ev.gone(["a"])  # a waiting agent syncs every 50 ms: no new dial yet
    now[0] += REDIAL_SECONDS / 2
    ev.gone(["a"])
    assert dialled == [["A"], ["A"], ["A"]]


class Store:
    def __init__(self) -> None:
        self.keys: dict[str, bytes] = {}

    def set(self, key: str, value: str) -> None:
        self.keys[key] = value.encode()

    def check(self, keys: list[str]) -> bool:
        return all(k in self.keys for k in keys)

    def get(self, key: str) -> bytes:
        return self.keys[key]


class Backend:
    """Serves one fixed rendezvous state, as the store would."""

    name = "fake"

    def __init__(self, state: Any) -> None:
        self.bits = pickle.dumps(state)

    def get_state(self) -> tuple[bytes, object]:
        return self.bits, object()


@pytest.mark.parametrize(
    ("round_members", "left", "complete"),
    [
        # The lost pod of a 2-pod job: its member goes, and torch opens a new round.
        (["dead"], [], False),
        (["live", "dead"], ["live"], True),  # the live member's own restart follows
        (["me", "live", "dead"], ["me", "live", "dead"], True),  # inside: nobody dialled
    ],
)
def test_a_regrouping_agent_drops_a_gone_member_at_once_and_keeps_a_live_one(
    round_members: list[str], left: list[str], complete: bool
) -> None:
    """The case that cost a lost pod 5 s: the survivor re-forms the group while the
    old, complete round still lists the dead member with a fresh heartbeat. torch's
    holder drops the member whose liveness port refuses, and keeps the live one; an
    agent still inside the round dials nobody (it is not waiting on anybody)."""
    gen = dr._NodeDescGenerator()
    names = ["me", "live", "dead"]
    nodes = {name: gen.generate(f"127.0.0.{i + 1}") for i, name in enumerate(names)}
    state = dr._RendezvousState()
    state.complete = True
    for rank, name in enumerate(round_members):
        state.participants[nodes[name]] = rank
        state.last_heartbeats[nodes[name]] = datetime.now(UTC)  # fresh: torch drops nobody
    settings = dr.RendezvousSettings("run", 1, 3, dr.RendezvousTimeout(), timedelta(seconds=1), 5)
    holder = dr._BackendRendezvousStateHolder(Backend(state), settings)  # type: ignore[arg-type]
    store = Store()
    live, dead = Listener("127.0.0.1"), Listener("127.0.0.1")
    store.set(liveness.KEY_PREFIX + repr(nodes["live"]), live.address)
    store.set(liveness.KEY_PREFIX + repr(nodes["dead"]), dead.address)
    try:
        me = SimpleNamespace(_state_holder=holder, _this_node=nodes["me"])
        own = liveness.install(me, store, "127.0.0.1:1")
        assert own is not None
        assert store.keys[liveness.KEY_PREFIX + repr(nodes["me"])].decode() == own.listener.address
        own.evictor.confirm([repr(nodes["live"]), repr(nodes["dead"])])  # after the round
        dead.close()  # then its pod is lost
        holder.sync()
    finally:
        live.close()
    assert set(holder.state.participants) == {nodes[n] for n in left}
    assert holder.state.complete == complete

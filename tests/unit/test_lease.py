"""Leader election as tables (core/lease.py), then the renew loop (kube/lease.py)
against an in-memory Lease API with a clock the test moves."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from trainop.core.lease import (
    LeaseTiming,
    Observation,
    assess_health,
    build_lease_spec,
    keeps_leading,
    may_take,
    observe_lease,
)
from trainop.kube.client import Fenced, Kube, KubeError
from trainop.kube.lease import LeaderElector

T = LeaseTiming()
WALL = datetime(2026, 1, 1, tzinfo=UTC)


def lease(holder: str | None, renewed: str = "2026-01-01T00:00:00.000000Z") -> dict[str, Any]:
    return {"spec": {"holderIdentity": holder, "renewTime": renewed, "leaseDurationSeconds": 15}}


def seen(holder: str, since: float, renewed: str = "r1") -> Observation:
    return Observation(holder, renewed, 15.0, since)


@pytest.mark.parametrize(
    ("previous", "read", "now", "since"),
    [
        (None, lease("b", "r1"), 100.0, 100.0),
        (seen("b", 90.0), lease("b", "r1"), 100.0, 90.0),
        (seen("b", 90.0), lease("b", "r2"), 100.0, 100.0),
        (seen("b", 90.0), lease("c", "r1"), 100.0, 100.0),
    ],
    ids=["first-sight", "unchanged-keeps-since", "renewed-restarts", "new-holder-restarts"],
)
def test_a_lease_is_judged_by_how_long_it_was_seen_unchanged(
    previous: Observation | None, read: dict[str, Any], now: float, since: float
) -> None:
    observed = observe_lease(read, previous, now)
    assert observed is not None
    assert observed.since == since


def test_no_lease_observes_nothing() -> None:
    assert observe_lease(None, seen("b", 1.0), 5.0) is None


@pytest.mark.parametrize(
    ("observed", "now", "free"),
    [
        (None, 0.0, True),
        (seen("", 0.0), 0.0, True),
        (seen("a", 0.0), 1.0, True),
        (seen("b", 0.0), 14.9, False),
        (seen("b", 0.0), 15.0, True),
        (seen("b", 0.0), 60.0, True),
    ],
    ids=["no-lease", "released", "mine", "held", "unchanged-a-duration", "long-unchanged"],
)
def test_a_standby_takes_the_lease_only_when_free_or_unchanged_for_a_duration(
    observed: Observation | None, now: float, free: bool
) -> None:
    assert may_take(observed, "a", now) is free


def test_a_renew_time_far_in_the_past_by_our_wall_clock_does_not_make_it_free() -> None:
    """A standby whose clock runs 1 h ahead first sees an 'old' renewTime: still held."""
    observed = observe_lease(lease("b", "2020-01-01T00:00:00.000000Z"), None, 500.0)
    assert may_take(observed, "a", 500.0 + 5) is False


@pytest.mark.parametrize(
    ("observed", "since_renewal", "leads"),
    [
        (seen("a", 0.0), 2.0, True),
        (seen("a", 0.0), 9.9, True),
        (seen("a", 0.0), 10.0, False),
        (seen("b", 0.0), 2.0, False),
        (None, 2.0, True),
    ],
    ids=["renewed-lately", "just-inside-deadline", "at-deadline", "someone-else-holds", "gone"],
)
def test_a_leader_stops_at_the_renew_deadline_or_when_someone_else_holds_it(
    observed: Observation | None, since_renewal: float, leads: bool
) -> None:
    assert keeps_leading(observed, "a", 100.0, 100.0 + since_renewal, T) is leads


def test_the_leader_stops_before_a_standby_may_start() -> None:
    """The margin the timing buys: stopped at the deadline, taken at the duration."""
    assert T.renew_deadline + T.retry_period < T.duration


@pytest.mark.parametrize(
    ("retry", "deadline", "duration"),
    [(2, 15, 15), (2, 20, 15), (10, 10, 15), (0, 10, 15)],
    ids=["deadline-equals-duration", "deadline-past-duration", "retry-equals-deadline", "no-retry"],
)
def test_timing_without_a_safety_margin_is_refused(
    retry: float, deadline: float, duration: float
) -> None:
    with pytest.raises(ValueError, match="retry_period < renew_deadline < duration"):
        LeaseTiming(duration=duration, renew_deadline=deadline, retry_period=retry)


@pytest.mark.parametrize(
    ("leading", "heartbeat", "healthy", "says"),
    [
        (False, None, True, "standby"),
        (True, 95.0, True, "leader"),
        (True, 89.0, False, "last beat 11.0 s ago"),
        (True, None, False, "never"),
    ],
    ids=["standby", "leader-beating", "leader-hung", "leader-never-beat"],
)
def test_health_is_ok_for_a_standby_and_for_a_leader_whose_loop_beats(
    leading: bool, heartbeat: float | None, healthy: bool, says: str
) -> None:
    ok, why = assess_health(leading, heartbeat, 100.0, 10.0)
    assert ok is healthy
    assert says in why


@pytest.mark.parametrize(
    ("holder", "transitions"),
    [(None, 1), ("a", 0), ("b", 1)],
    ids=["unheld", "renew-mine", "take-over"],
)
def test_the_written_spec_names_me_and_counts_transitions(
    holder: str | None, transitions: int
) -> None:
    spec = build_lease_spec(lease(holder), "a", WALL, 15)
    assert spec["holderIdentity"] == "a"
    assert spec["renewTime"] == "2026-01-01T00:00:00.000000Z"
    assert spec["leaseTransitions"] == transitions


# --- the renew loop ---------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeLeases:
    """The Lease API of one API server: get/create/update with resourceVersion checks."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.down = False
        self.version = 0

    async def request(self, verb: str, path: str, *, resource: str, body: Any = None) -> Any:
        assert resource == "leases"
        await asyncio.sleep(0)
        if self.down:
            raise KubeError(503, "ServiceUnavailable", "etcd is away")
        if verb == "get":
            if self.lease is None:
                raise KubeError(404, "NotFound", path)
            return self.lease
        if verb == "update":
            assert self.lease is not None
            if body["metadata"]["resourceVersion"] != self.lease["metadata"]["resourceVersion"]:
                raise KubeError(409, "Conflict", path)
        self.version += 1
        metadata = {**body["metadata"], "resourceVersion": str(self.version)}
        self.lease = {**body, "metadata": metadata}
        return self.lease


FAST = LeaseTiming(duration=15.0, renew_deadline=10.0, retry_period=0.01)


def elector(api: FakeLeases, me: str, clock: Clock) -> LeaderElector:
    return LeaderElector(api, "ns", "op", me, timing=FAST, clock=clock)  # type: ignore[arg-type]


async def leading(
    api: FakeLeases, clock: Clock
) -> tuple[LeaderElector, asyncio.Event, asyncio.Task[None]]:
    """Replica "a" holding the lease, its hold loop running; `lost` is set when it stops."""
    leader = elector(api, "a", clock)
    await leader.acquire()
    lost = asyncio.Event()
    return leader, lost, asyncio.create_task(leader.hold(lost))


async def test_a_leader_cut_off_from_the_api_server_stops_at_the_renew_deadline() -> None:
    api, clock = FakeLeases(), Clock()
    leader, lost, hold = await leading(api, clock)
    await asyncio.sleep(0.05)
    assert not lost.is_set()
    api.down = True
    clock.now += 9.0
    await asyncio.sleep(0.05)
    assert not lost.is_set(), "stopped before the renew deadline"
    clock.now += 1.0
    await asyncio.wait_for(lost.wait(), timeout=1)
    await hold
    assert leader.leading is False
    assert leader.health() == (True, "standby")


async def test_a_standby_takes_over_only_after_watching_the_lease_unchanged_for_a_duration() -> (
    None
):
    api, clock = FakeLeases(), Clock()
    await elector(api, "a", clock).acquire()  # a leads, then dies without a word
    standby = elector(api, "b", clock)
    waiting = asyncio.create_task(standby.acquire())
    await asyncio.sleep(0.05)
    clock.now += 14.0
    await asyncio.sleep(0.05)
    assert not waiting.done(), "took a lease still within its duration"
    clock.now += 1.0
    await asyncio.wait_for(waiting, timeout=1)
    assert api.lease is not None
    assert api.lease["spec"]["holderIdentity"] == "b"
    assert api.lease["spec"]["leaseTransitions"] == 1


async def test_the_leader_steps_down_at_once_when_another_holds_the_lease() -> None:
    api, clock = FakeLeases(), Clock()
    _, lost, hold = await leading(api, clock)
    assert api.lease is not None
    api.lease = {**api.lease, "spec": {**api.lease["spec"], "holderIdentity": "b"}}
    await asyncio.wait_for(lost.wait(), timeout=1)
    await hold


async def test_a_leader_whose_loop_stops_beating_turns_unhealthy() -> None:
    api, clock = FakeLeases(), Clock()
    leader, _, hold = await leading(api, clock)
    await asyncio.sleep(0.05)
    assert leader.health() == (True, "leader")
    # As the metrics thread sees a loop blocked for 11 s: no beat in that time.
    hold.cancel()
    with pytest.raises(asyncio.CancelledError):
        await hold
    clock.now += 11.0
    ok, why = leader.health()
    assert not ok
    assert "11.0 s ago" in why


class RecordingApi:
    """Stands for kubernetes_asyncio's ApiClient: records what would go on the wire."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    async def call_api(self, path: str, method: str, **_: Any) -> Any:
        self.sent.append((method, path))
        raise AssertionError("the fence must stop writes before this")


async def test_a_leader_paused_past_its_renew_deadline_is_fenced_before_any_write() -> None:
    """Woken from a pause, the renew loop may not have run yet: the fence alone must
    refuse the first write, on the monotonic clock, and stop the operator."""
    api, clock = FakeLeases(), Clock()
    leader = elector(api, "a", clock)
    await leader.acquire()
    wire = RecordingApi()
    kube = Kube(wire, fence=leader.may_write)
    clock.now += 9.9
    assert leader.may_write()  # still within the deadline of the last renewal
    clock.now += 0.2  # the pause: no renewal for 10.1 s
    for verb in ("create", "update", "patch", "delete"):
        with pytest.raises(Fenced):
            await kube.request(verb, "/api/v1/namespaces/x/pods", resource="pods", body={})
    assert wire.sent == []
    assert leader.lost.is_set()
    assert leader.leading is False
    await leader.release()  # not provably ours: no write to the lease either
    assert api.lease is not None
    assert api.lease["spec"]["holderIdentity"] == "a"

"""Leader election decisions over a coordination.k8s.io Lease. Purely computational.

The timing follows client-go's leader election: a leader that could not renew
for `renew_deadline` stops leading, while a standby takes the lease only after it
has watched it stay unchanged for the whole `duration`, so the old leader has
stopped `duration - renew_deadline` seconds before anyone else may start.
Every time here is a monotonic reading of the caller's own clock: the renewTime
written in the Lease is for people, since two machines' wall clocks can disagree
by more than the safety margin.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class LeaseTiming:
    """Seconds. client-go's defaults: 15 / 10 / 2."""

    duration: float = 15.0  # written into the Lease: how long a standby waits it out
    renew_deadline: float = 10.0  # a leader that renewed nothing for this long stops
    retry_period: float = 2.0  # between attempts to take or renew

    def __post_init__(self) -> None:
        if not 0 < self.retry_period < self.renew_deadline < self.duration:
            raise ValueError(
                "lease timing needs 0 < retry_period < renew_deadline < duration, got "
                f"{self.retry_period} / {self.renew_deadline} / {self.duration}: the gap "
                "between renew_deadline and duration is the old leader's head start in stopping"
            )


@dataclass(frozen=True)
class Observation:
    """Someone's Lease as a candidate last saw it change, and when (its own clock)."""

    holder: str
    renew_time: str
    duration: float
    since: float


def observe_lease(
    lease: dict[str, Any] | None, previous: Observation | None, now: float
) -> Observation | None:
    """The observation after reading `lease` at `now`: `since` moves only when the
    holder or its renewTime changed since `previous`."""
    if lease is None:
        return None
    spec = lease.get("spec") or {}
    holder = str(spec.get("holderIdentity") or "")
    renew_time = str(spec.get("renewTime") or spec.get("acquireTime") or "")
    duration = float(spec.get("leaseDurationSeconds") or LeaseTiming().duration)
    if previous is not None and (previous.holder, previous.renew_time) == (holder, renew_time):
        return Observation(holder, renew_time, duration, previous.since)
    return Observation(holder, renew_time, duration, now)


def may_take(observed: Observation | None, me: str, now: float) -> bool:
    """May `me` take (or keep) the lease now? Yes if there is none, nobody or `me`
    holds it, or its holder has not renewed it for a whole lease duration as far
    as `me` has watched."""
    if observed is None or observed.holder in ("", me):
        return True
    return now - observed.since >= observed.duration


def keeps_leading(
    observed: Observation | None, me: str, last_renewed: float, now: float, timing: LeaseTiming
) -> bool:
    """May a leader that last renewed at `last_renewed` go on? Not once someone else
    holds the lease, nor past the renew deadline: a standby may take over
    `timing.duration` after that renewal, and we must have stopped by then."""
    if observed is not None and observed.holder not in ("", me):
        return False
    return now - last_renewed < timing.renew_deadline


def assess_health(
    leading: bool, heartbeat: float | None, now: float, stale_after: float
) -> tuple[bool, str]:
    """The /healthz answer. A standby is healthy (it only waits); a leader is while
    its event loop keeps beating, since a hung loop reconciles nothing yet would
    keep answering from the metrics thread."""
    if not leading:
        return True, "standby"
    if heartbeat is None or now - heartbeat > stale_after:
        age = "never" if heartbeat is None else f"{now - heartbeat:.1f} s ago"
        return False, f"leader's event loop last beat {age} (limit {stale_after:g} s)"
    return True, "leader"


def build_lease_spec(
    lease: dict[str, Any] | None, me: str, now: datetime, duration_seconds: int
) -> dict[str, Any]:
    """The spec `me` writes to take or renew the lease."""
    spec = dict((lease or {}).get("spec") or {})
    stamp = now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    taking = spec.get("holderIdentity") != me
    if taking:
        spec["acquireTime"] = stamp
        spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + (1 if lease else 0)
    spec.setdefault("leaseTransitions", 0)
    spec.update(holderIdentity=me, leaseDurationSeconds=duration_seconds, renewTime=stamp)
    return spec

"""Leader election decisions over a coordination.k8s.io Lease. Purely computational."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from trainop.core.observe import parse_time


def lease_free_for(lease: dict[str, Any] | None, me: str, now: datetime) -> bool:
    """May `me` take (or keep) the lease now? Yes if nobody holds it, I hold it,
    or the holder stopped renewing for longer than the lease duration."""
    if lease is None:
        return True
    spec = lease.get("spec") or {}
    holder = spec.get("holderIdentity")
    if not holder or holder == me:
        return True
    renewed = parse_time(spec.get("renewTime")) or parse_time(spec.get("acquireTime"))
    if renewed is None:
        return True
    return now >= renewed + timedelta(seconds=int(spec.get("leaseDurationSeconds") or 15))


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

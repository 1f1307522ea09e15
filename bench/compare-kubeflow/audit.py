"""The API server's audit log as the benchmark's clock and request counter.

Purely computational, no side effects: JSON lines in, timings and counts out. The
file-reading tail lives in compare.py.

Every time here is an audit event's `stageTimestamp` at `ResponseComplete`, in
seconds since the epoch: for a create, the moment the object is stored and visible
to every watcher. Both operators are timed on this one clock, so neither's client,
informer or admission webhook is inside or outside the figure by accident.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class Entry:
    """One completed API request."""

    t: float
    verb: str
    resource: str
    subresource: str
    namespace: str
    name: str
    user_agent: str
    code: int
    dry_run: bool

    @property
    def ok(self) -> bool:
        return 200 <= self.code <= 299

    @property
    def stored_create(self) -> bool:
        """A create that made an object (not a dry run, not refused, not a subresource
        such as a binding)."""
        return self.verb == "create" and self.ok and not self.dry_run and not self.subresource


def parse_time(stamp: str) -> float:
    """RFC 3339 with microseconds, as the API server writes it."""
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def parse_line(line: str) -> Entry | None:
    """One audit log line; None for other stages and for a line cut short by a write
    still in progress."""
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return None
    if event.get("stage") != "ResponseComplete":
        return None
    ref = event.get("objectRef") or {}
    return Entry(
        t=parse_time(event["stageTimestamp"]),
        verb=event.get("verb", ""),
        resource=ref.get("resource", ""),
        subresource=ref.get("subresource", ""),
        namespace=ref.get("namespace", ""),
        name=ref.get("name", ""),
        user_agent=event.get("userAgent", ""),
        code=int((event.get("responseStatus") or {}).get("code", 0)),
        dry_run="dryRun=" in event.get("requestURI", ""),
    )


def worker_prefix(job: str) -> str:
    """Both operators name a job's workers <job>-worker-<index>."""
    return f"{job}-worker-"


def creates(entries: Iterable[Entry], resource: str, namespace: str, prefix: str) -> list[Entry]:
    """Objects of `resource` whose name starts with `prefix`, as they were stored, oldest first."""
    return sorted(
        (
            e
            for e in entries
            if e.stored_create
            and e.resource == resource
            and e.namespace == namespace
            and e.name.startswith(prefix)
        ),
        key=lambda e: e.t,
    )


def job_created_at(
    entries: Iterable[Entry], resource: str, namespace: str, job: str
) -> float | None:
    found = [e.t for e in creates(entries, resource, namespace, job) if e.name == job]
    return found[0] if found else None


def time_to_pods(
    entries: Sequence[Entry], job_resource: str, namespace: str, job: str, n: int
) -> float | None:
    """Seconds from the job's create to its n-th worker pod's create (None: not yet).
    A worker recreated under the same name counts once."""
    start = job_created_at(entries, job_resource, namespace, job)
    if start is None:
        return None
    seen: dict[str, float] = {}
    for e in creates(entries, "pods", namespace, worker_prefix(job)):
        seen.setdefault(e.name, e.t)
    if len(seen) < n:
        return None
    return sorted(seen.values())[n - 1] - start


def marked_failed_at(
    entries: Iterable[Entry], namespace: str, pod: str, after: float
) -> float | None:
    """The first status write to `pod` after `after` (the node agent reporting the exit
    that the benchmark asked for)."""
    found = [
        e.t
        for e in entries
        if e.verb in ("patch", "update")
        and e.ok
        and e.resource == "pods"
        and e.subresource == "status"
        and e.namespace == namespace
        and e.name == pod
        and e.t > after
    ]
    return min(found) if found else None


def replaced_at(entries: Iterable[Entry], namespace: str, pod: str, after: float) -> float | None:
    """The first stored create of a pod named `pod` after `after`."""
    found = [e.t for e in creates(entries, "pods", namespace, pod) if e.name == pod and e.t > after]
    return found[0] if found else None


def is_from(entry: Entry, agents: Sequence[str]) -> bool:
    return entry.user_agent.startswith(tuple(agents))


def request_counts(
    entries: Iterable[Entry], agents: Sequence[str], start: float, end: float
) -> Counter[str]:
    """Requests the given clients completed in [start, end], as "verb resource[/sub]".
    Watches are not in the log (they last as long as the client); gets and lists are
    when the cluster was started with audit_reads."""
    out: Counter[str] = Counter()
    for e in entries:
        if start <= e.t <= end and is_from(e, agents):
            res = f"{e.resource}/{e.subresource}" if e.subresource else e.resource
            out[f"{e.verb}{' (dry run)' if e.dry_run else ''} {res}"] += 1
    return out


def failed_requests(
    entries: Iterable[Entry], agents: Sequence[str], start: float, end: float
) -> Counter[str]:
    """Requests of the given clients in [start, end] answered with an error, as
    "code verb resource"."""
    out: Counter[str] = Counter()
    for e in entries:
        if start <= e.t <= end and is_from(e, agents) and not e.ok:
            out[f"{e.code} {e.verb} {e.resource}"] += 1
    return out

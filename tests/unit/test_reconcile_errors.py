"""A job whose planning raises, and the races every controller meets, against a fake API
server (tests/unit/test_bad_input.FakeKube): a condition and one Event instead of a
traceback loop, other jobs unaffected, and benign races said in one INFO line."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from tests.factories import NOW
from tests.unit.test_bad_input import CFG, FakeKube, job, settled
from trainop.kube.client import KubeError
from trainop.reconcile import Reconciler

KEY = ("team-a", "llm")


def poisoned() -> dict[str, Any]:
    """A status anyone with status RBAC could write: admitted at the end of time, so the
    one-year deadline lies past datetime's range and planning raises OverflowError."""
    body = job(runPolicy={"activeDeadlineSeconds": 31536000})
    body["status"] = {"phase": "Running", "admissionTime": "9999-12-31T00:00:00Z"}
    return body


def run(rec: Reconciler, passes: int = 1) -> list[float | None]:
    async def go() -> list[float | None]:
        return [await settled(rec, KEY) for _ in range(passes)]

    return asyncio.run(go())


def condition(kube: FakeKube, type_: str) -> dict[str, Any] | None:
    conds = kube.job.get("status", {}).get("conditions", [])
    return next((c for c in conds if c["type"] == type_), None)


def test_a_job_that_cannot_be_planned_gets_a_condition_and_one_event_and_nothing_else(
    caplog: pytest.LogCaptureFixture,
) -> None:
    kube = FakeKube(poisoned())
    rec = Reconciler(kube, CFG, clock=lambda: NOW)  # type: ignore[arg-type]
    with caplog.at_level(logging.INFO):
        waits = run(rec, passes=3)
    cond = condition(kube, "ReconcileError")
    assert cond is not None
    assert (cond["status"], cond["reason"]) == ("True", "PlanningFailed")
    assert "OverflowError" in cond["message"]
    assert kube.job["status"]["phase"] == "Running"  # left as it was
    assert kube.objects == []
    warnings = [e for e in kube.events if e["reason"] == "ReconcileError"]
    assert len(warnings) == 1  # not one per retry
    assert all(w is not None and w >= 30 for w in waits)  # no hot retry loop
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1


def test_once_the_cause_is_fixed_the_job_is_planned_and_the_condition_clears() -> None:
    kube = FakeKube(poisoned())
    rec = Reconciler(kube, CFG, clock=lambda: NOW)  # type: ignore[arg-type]
    run(rec)
    kube.job["status"]["admissionTime"] = "2026-01-01T00:00:00Z"  # e.g. a status repaired
    run(rec)
    cond = condition(kube, "ReconcileError")
    assert cond is not None
    assert (cond["status"], cond["reason"]) == ("False", "Planned")
    assert {o["metadata"]["name"] for o in kube.objects} >= {"llm-worker-0", "llm-worker-1"}


def test_a_poisoned_job_leaves_its_neighbours_alone() -> None:
    bad, good = FakeKube(poisoned()), FakeKube(job())
    good.job["metadata"]["namespace"] = "team-b"
    rec = Reconciler(bad, CFG, clock=lambda: NOW)  # type: ignore[arg-type]

    async def both() -> None:
        await settled(rec, KEY)
        rec.kube = good  # type: ignore[assignment]  (the same reconciler, the next job)
        await settled(rec, ("team-b", "llm"))

    asyncio.run(both())
    assert condition(good, "ReconcileError") is None
    assert len([o for o in good.objects if o["kind"] == "Pod"]) == 3  # store + 2 workers
    assert condition(bad, "ReconcileError") is not None


class RacyKube(FakeKube):
    """A FakeKube whose status write or pod create meets a race."""

    def __init__(self, status_error: KubeError | None, create_error: KubeError | None) -> None:
        super().__init__(job())
        self.status_error = status_error
        self.create_error = create_error
        self.calls = 0

    async def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.calls += 1
        return await super().get_job(namespace, name)

    async def replace_job_status(self, job: dict[str, Any], status: dict[str, Any]) -> None:
        if self.status_error is not None:
            raise self.status_error
        await super().replace_job_status(job, status)

    async def create(self, obj: dict[str, Any], *, dry_run: bool = False) -> None:
        if self.create_error is not None and not dry_run and obj["kind"] == "Pod":
            raise self.create_error
        await super().create(obj, dry_run=dry_run)


TERMINATING = KubeError(
    403,
    "Forbidden",
    'pods "llm-worker-0" is forbidden: unable to create new content in namespace team-a '
    "because it is being terminated",
)


@pytest.mark.parametrize(
    ("status_error", "create_error", "wait", "said"),
    [
        pytest.param(
            KubeError(404, "NotFound", 'trainingjobs "llm" not found'),
            None,
            None,
            "is gone",
            id="job-deleted-mid-reconcile",
        ),
        pytest.param(
            KubeError(409, "Conflict", "the object has been modified"),
            None,
            0.0,
            "changed meanwhile",
            id="concurrent-scale",
        ),
        pytest.param(None, TERMINATING, None, "being deleted", id="namespace-terminating"),
    ],
)
def test_benign_races_are_one_info_line_and_no_retry_storm(
    caplog: pytest.LogCaptureFixture,
    status_error: KubeError | None,
    create_error: KubeError | None,
    wait: float | None,
    said: str,
) -> None:
    kube = RacyKube(status_error, create_error)
    rec = Reconciler(kube, CFG, clock=lambda: NOW)  # type: ignore[arg-type]
    with caplog.at_level(logging.INFO, logger="trainop"):
        assert run(rec) == [wait]
    lines = [r for r in caplog.records if r.name.startswith("trainop")]
    assert [r.levelname for r in lines] == ["INFO"]
    assert said in lines[0].getMessage()
    assert not any(r.exc_info for r in lines)
    assert not [e for e in kube.events if e["reason"] == "CreateRejected"]


def test_a_namespace_being_deleted_is_left_alone_afterwards() -> None:
    kube = RacyKube(None, TERMINATING)
    rec = Reconciler(kube, CFG, clock=lambda: NOW)  # type: ignore[arg-type]
    run(rec)
    asked = kube.calls
    run(rec, passes=3)  # woken by the pods being deleted with the namespace
    assert kube.calls == asked  # not even read again

"""Status that reads cleanly: counts right for finished jobs, no condition about workers
that no longer run, and inactive phase conditions that do not repeat another's reason."""

from __future__ import annotations

from typing import Any

import pytest

from tests.factories import NOW, observed, spec, store, worker
from trainop.core.config import OperatorConfig
from trainop.core.plan import compute_plan

CFG = OperatorConfig()
SCHEDULED = {
    "type": "PodsScheduled",
    "status": "True",
    "reason": "Scheduled",
    "message": "every worker pod is scheduled",
    "lastTransitionTime": "2026-11-22T11:00:00Z",
}


@pytest.mark.parametrize(
    ("the_spec", "status", "pods"),
    [
        pytest.param(
            spec(),
            {"phase": "Succeeded", "readyReplicas": 1, "desiredReplicas": 0, "workers": "1/0"},
            [worker(0), store()],
            id="succeeded-with-a-worker-still-up",
        ),
        pytest.param(
            spec(),
            {"phase": "Failed", "readyReplicas": 2, "workers": "2/2"},
            [worker(0), worker(1)],
            id="failed",
        ),
        pytest.param(
            spec(suspend=True), {"phase": "Running"}, [worker(0), worker(1)], id="suspend"
        ),
    ],
)
def test_a_job_with_no_workers_to_run_says_zero_and_drops_worker_conditions(
    the_spec: Any, status: dict[str, Any], pods: list[Any]
) -> None:
    status = {**status, "conditions": [SCHEDULED]}
    plan = compute_plan(observed(pods, the_spec=the_spec, status=status), NOW, CFG)
    st = plan.status
    assert (st.ready_replicas, st.desired_replicas, st.workers) == (0, 0, "0/0")
    assert [c.type for c in st.conditions if c.type == "PodsScheduled"] == []


def test_inactive_phase_conditions_name_the_phase_that_holds_without_its_reason() -> None:
    status = {"phase": "Running", "startTime": "2026-11-22T11:00:00Z"}
    before = compute_plan(observed([worker(0), worker(1), store()], status=status), NOW, CFG)
    suspended = compute_plan(
        observed(
            [worker(0), worker(1), store()],
            the_spec=spec(suspend=True),
            status=before.status.to_api(),
        ),
        NOW,
        CFG,
    )
    conds = {c.type: c for c in suspended.status.conditions}
    assert (conds["Suspended"].status, conds["Suspended"].reason) == ("True", "Suspended")
    running = conds["Running"]
    assert (running.status, running.reason, running.message) == (
        "False",
        "Suspended",
        "the job is Suspended",
    )

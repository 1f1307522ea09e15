"""Hang detection as tables: a running worker whose last progress report is older than
its bound is Stalled (condition + one Warning Event), restarted as a counted Hang only
with failurePolicy.restartOnHang, and nobody is judged without a report to judge by."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from tests.factories import NOW, failed, observed, spec, store, worker
from trainop.core.config import OperatorConfig
from trainop.core.observe import ObservedPod
from trainop.core.plan import Plan, compute_plan

CFG = OperatorConfig()
T = NOW.timestamp()


def stepping(slot: int, silent: float, step_seconds: float | None = 1.0, **kw: Any) -> ObservedPod:
    """A Running worker whose trainer last reported step 40 `silent` seconds ago."""
    progress: dict[str, Any] = {"step": 40, "time": T - silent}
    if step_seconds is not None:
        progress["stepSeconds"] = step_seconds
    return replace(worker(slot, **kw), progress=progress)


def plan(pods: list[ObservedPod], status: dict[str, Any] | None = None, **policy: Any) -> Plan:
    the_spec = spec(failurePolicy={"backoffLimit": 3, "backoffSeconds": 0, **policy})
    started = {"phase": "Running", "startTime": "2026-11-22T11:00:00Z", **(status or {})}
    return compute_plan(observed([*pods, store()], the_spec=the_spec, status=started), NOW, CFG)


def stalled(p: Plan) -> str | None:
    cond = next((x for x in p.status.conditions if x.type == "Stalled"), None)
    return None if cond is None else cond.status


@pytest.mark.parametrize(
    ("pods", "policy", "want"),
    [
        pytest.param([stepping(0, 30), stepping(1, 2)], {}, None, id="both-stepping"),
        pytest.param([stepping(0, 121), stepping(1, 2)], {}, "True", id="past-the-120-s-floor"),
        pytest.param(
            [stepping(0, 150, step_seconds=20)], {}, None, id="10-slow-steps-is-the-bound"
        ),
        pytest.param([stepping(0, 201, step_seconds=20)], {}, "True", id="past-10-slow-steps"),
        pytest.param([stepping(0, 40)], {"hangSeconds": 30}, "True", id="explicit-bound"),
        pytest.param(
            [stepping(0, 3600, step_seconds=None)], {"hangSeconds": 7200}, None, id="long-bound"
        ),
        pytest.param([worker(0), worker(1)], {}, None, id="no-report-no-judgement"),
        pytest.param([stepping(0, 999, phase="Pending")], {}, None, id="not-running-not-judged"),
    ],
)
def test_stalled_condition(
    pods: list[ObservedPod], policy: dict[str, Any], want: str | None
) -> None:
    p = plan(pods, **policy)
    assert stalled(p) == want
    warned = [e for e in p.events if e.reason == "Stalled"]
    assert len(warned) == (1 if want == "True" else 0)
    assert not p.deletes  # only restartOnHang restarts
    assert p.status.restarts == 0


def test_a_stepping_job_is_woken_when_its_bound_would_pass() -> None:
    # Nothing else changes on a hung pod: the plan must ask to be run again in time.
    p = plan([stepping(0, 30)])
    assert p.requeue_after is not None
    assert p.requeue_after <= 91


def test_the_warning_is_sent_once_and_the_condition_clears_when_steps_resume() -> None:
    first = plan([stepping(0, 200)])
    again = plan([stepping(0, 215)], status=first.status.to_api())
    assert stalled(again) == "True"
    assert not [e for e in again.events if e.reason == "Stalled"]
    resumed = plan([stepping(0, 1)], status=again.status.to_api())
    assert stalled(resumed) == "False"
    cond = next(x for x in resumed.status.conditions if x.type == "Stalled")
    assert cond.reason == "Progressing"


def test_restart_on_hang_replaces_the_worker_once_as_a_counted_hang() -> None:
    hung = stepping(0, 200)
    p = plan([hung, stepping(1, 1)], restartOnHang=True)
    assert {d.name: d.grace_seconds for d in p.deletes} == {hung.name: None}  # SIGTERM first
    assert p.status.restarts == 1
    assert p.status.restarts_by_reason == {"Hang": 1}
    assert p.status.last_failure is not None
    assert (p.status.last_failure.reason, p.status.last_failure.counted) == ("Hang", True)
    assert "no training step for 200 s" in p.status.last_failure.message
    # The deleted pod then ends (SIGTERM, exit 143): that is the same failure, not another.
    ended = replace(failed(0, exit_code=143), progress=hung.progress)
    after = plan([ended, stepping(1, 1)], status=p.status.to_api(), restartOnHang=True)
    assert after.status.restarts == 1


def test_a_hang_restart_past_the_budget_fails_the_job() -> None:
    p = plan([stepping(0, 200)], status={"restarts": 3}, restartOnHang=True)
    assert p.status.phase == "Failed"
    assert p.status.reason == "BackoffLimitExceeded"


def test_a_rule_can_fail_the_job_on_a_hang() -> None:
    rules = [{"reasons": ["Hang"], "action": "FailJob"}]
    p = plan([stepping(0, 200)], restartOnHang=True, rules=rules)
    assert (p.status.phase, p.status.reason) == ("Failed", "FailedByRule")

"""Spec edits on a running job (the pure plan): every field has a defined rule.

Fields that shape the workers restart all of them together (graceful, not counted);
replicas within the range, suspend, failurePolicy and runPolicy apply live; an edit
the API server refuses stops nothing."""

from __future__ import annotations

from typing import Any

import pytest

from tests.factories import NOW, observed, spec, store, worker
from trainop.api.spec import TrainingJobSpec
from trainop.core.config import OperatorConfig
from trainop.core.plan import Observed, Plan, compute_plan

CFG = OperatorConfig()
BEFORE = spec()


def running(the_spec: TrainingJobSpec, **kw: Any) -> Observed:
    """Two workers of BEFORE running, with the status the operator wrote for them."""
    status = {
        "phase": "Running",
        "startTime": "2026-11-22T11:00:00Z",
        "appliedSpec": BEFORE.worker_fingerprint(),
    }
    return observed([worker(0), worker(1), store()], the_spec=the_spec, status=status, **kw)


def plan_for(**edit: Any) -> Plan:
    return compute_plan(running(spec(**edit)), NOW, CFG)


def condition(plan: Plan, type_: str) -> tuple[str, str] | None:
    cond = next((c for c in plan.status.conditions if c.type == type_), None)
    return None if cond is None else (cond.status, cond.reason)


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        pytest.param({"image": "trainer:2"}, "spec.image", id="image"),
        pytest.param({"imagePullPolicy": "Always"}, "spec.imagePullPolicy", id="pull-policy"),
        pytest.param(
            {"entrypoint": {"module": "train", "args": []}}, "spec.entrypoint", id="entrypoint"
        ),
        pytest.param({"env": [{"name": "NCCL_DEBUG", "value": "INFO"}]}, "spec.env", id="env"),
        pytest.param({"resources": {"gpus": 4}}, "spec.resources", id="resources"),
        pytest.param({"nprocPerNode": 1}, "spec.nprocPerNode", id="nproc"),
        pytest.param({"maxReplicas": 5}, "minReplicas..maxReplicas (now 1:5)", id="max-replicas"),
        pytest.param({"minReplicas": 2}, "minReplicas..maxReplicas (now 2:4)", id="min-replicas"),
        pytest.param(
            {"rendezvous": {"lastCallTimeoutSeconds": 30}}, "spec.rendezvous", id="rendezvous"
        ),
        pytest.param({"checkpoint": {"everySteps": 50}}, "spec.checkpoint", id="checkpoint"),
        pytest.param(
            {"terminationGracePeriodSeconds": 120},
            "spec.terminationGracePeriodSeconds",
            id="grace",
        ),
        pytest.param(
            {"scheduling": {"nodeSelector": {"pool": "h100"}}}, "spec.scheduling", id="scheduling"
        ),
        pytest.param(
            {"podTemplate": {"spec": {"dnsPolicy": "Default"}}},
            "spec.podTemplate",
            id="pod-template",
        ),
        pytest.param({"metrics": {"enabled": False}}, "spec.metrics", id="metrics"),
    ],
)
def test_an_edit_to_a_field_that_shapes_workers_restarts_them_all_together(
    edit: dict[str, Any], field: str
) -> None:
    plan = plan_for(**edit)
    assert plan.status.job_generation == 1
    # Every old worker goes gracefully (its own grace period: it checkpoints on SIGTERM).
    assert sorted((d.name, d.grace_seconds) for d in plan.deletes) == [
        ("llm-worker-0", None),
        ("llm-worker-1", None),
    ]
    # No new worker until the old one of its slot is gone: never old and new side by side.
    assert [o for o in plan.creates if o["kind"] == "Pod"] == []
    assert plan.status.restarts == 0  # not counted against the budget
    (note,) = [e for e in plan.events if e.reason == "SpecChanged"]
    assert field in note.message
    assert condition(plan, "SpecApplied") == ("False", "Restarting")
    # The API server is asked about the new worker before any old one is stopped.
    (sample,) = plan.verify
    assert sample["metadata"]["labels"]["trainop.dev/job-generation"] == "1"


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param({"replicas": 3}, id="scale-within-range"),
        pytest.param({"failurePolicy": {"backoffLimit": 20}}, id="budget"),
        pytest.param({"runPolicy": {"activeDeadlineSeconds": 7200}}, id="deadline"),
        pytest.param({"runPolicy": {"ttlSecondsAfterFinished": 60}}, id="ttl"),
    ],
)
def test_live_fields_apply_without_restarting_anyone(edit: dict[str, Any]) -> None:
    plan = plan_for(**edit)
    assert plan.status.job_generation == 0
    assert [d for d in plan.deletes if d.name.startswith("llm-worker")] == []
    assert not [e for e in plan.events if e.reason == "SpecChanged"]
    assert plan.verify == ()


def test_scaling_a_fixed_size_job_restarts_it_at_the_new_size() -> None:
    """With minReplicas and maxReplicas unset, torchrun's --nnodes is replicas:replicas,
    so the old workers could never admit a third one."""
    fixed = spec(minReplicas=None, maxReplicas=None)
    status = {"phase": "Running", "appliedSpec": fixed.worker_fingerprint()}
    obs = observed(
        [worker(0), worker(1), store()],
        the_spec=spec(minReplicas=None, maxReplicas=None, replicas=3),
        status=status,
    )
    plan = compute_plan(obs, NOW, CFG)
    assert plan.status.job_generation == 1
    assert "now 3:3" in next(e.message for e in plan.events if e.reason == "SpecChanged")


def test_an_edit_the_api_server_refuses_stops_nothing_and_says_so() -> None:
    obs = running(spec(image="trainer:2"), admission_error="Pod llm-worker-0: quota exceeded")
    plan = compute_plan(obs, NOW, CFG)
    assert plan.status.job_generation == 0
    assert plan.deletes == ()
    assert plan.status.applied_spec == BEFORE.worker_fingerprint()  # still the old one
    assert condition(plan, "SpecValid") == ("False", "UpdateRejected")
    assert plan.status.phase is not None
    assert plan.status.phase.value == "Running"  # the old workers keep training
    (warning,) = [e for e in plan.events if e.reason == "UpdateRejected"]
    assert "quota exceeded" in warning.message
    assert "spec.image" in warning.message


def test_a_refused_replacement_shows_in_pods_scheduled() -> None:
    obs = observed(
        [worker(0), store()],
        the_spec=BEFORE,
        status={"phase": "Running", "appliedSpec": BEFORE.worker_fingerprint()},
        admission_error="Pod llm-worker-1: exceeded quota",
    )
    plan = compute_plan(obs, NOW, CFG)
    assert condition(plan, "PodsScheduled") == ("False", "CreateRejected")


def test_a_job_without_workers_adopts_the_spec_without_a_restart() -> None:
    obs = observed([], the_spec=spec(image="trainer:2"), status={"appliedSpec": {"image": "x"}})
    plan = compute_plan(obs, NOW, CFG)
    assert plan.status.job_generation == 0
    assert plan.status.applied_spec == spec(image="trainer:2").worker_fingerprint()
    assert len([o for o in plan.creates if o["kind"] == "Pod"]) >= 2


def test_spec_applied_turns_true_once_only_new_workers_run() -> None:
    after = spec(image="trainer:2")
    status = {
        "phase": "Restarting",
        "jobGeneration": 1,
        "appliedSpec": after.worker_fingerprint(),
        "conditions": [
            {
                "type": "SpecApplied",
                "status": "False",
                "reason": "Restarting",
                "message": "spec.image changed",
                "lastTransitionTime": "2026-11-22T11:59:00Z",
            }
        ],
    }
    mixed = [worker(0, job_generation=1), worker(1, deleting=True), store()]
    plan = compute_plan(observed(mixed, the_spec=after, status=status), NOW, CFG)
    assert condition(plan, "SpecApplied") == ("False", "Restarting")
    fresh = [worker(0, job_generation=1), worker(1, job_generation=1), store()]
    plan = compute_plan(observed(fresh, the_spec=after, status=status), NOW, CFG)
    assert condition(plan, "SpecApplied") == ("True", "Applied")

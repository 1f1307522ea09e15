"""compute_plan as tables: observed state in, decisions out."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from tests.factories import NOW, failed, node, observed, spec, store, worker
from trainop.api import constants as c
from trainop.api.status import Phase
from trainop.core.config import OperatorConfig
from trainop.core.plan import Plan, compute_plan

CFG = OperatorConfig()


def plan_for(**kw: Any) -> Plan:
    return compute_plan(observed(**kw), NOW, CFG)


def created_names(plan: Plan) -> list[str]:
    return sorted(o["metadata"]["name"] for o in plan.creates)


def deleted(plan: Plan) -> dict[str, int | None]:
    return {d.name: d.grace_seconds for d in plan.deletes}


def test_new_job_creates_service_network_policy_store_and_every_worker() -> None:
    plan = plan_for(service=False)
    assert created_names(plan) == ["llm", "llm", "llm-rdzv", "llm-worker-0", "llm-worker-1"]
    # The NetworkPolicy comes before any pod: no pod of the job is ever open to others.
    kinds = [o["kind"] for o in plan.creates]
    assert kinds.index("NetworkPolicy") < kinds.index("Pod")
    assert plan.status.phase is Phase.PENDING
    assert plan.status.workers == "0/2"
    assert any(e.reason == "CreatedWorkers" for e in plan.events)


def test_reconcile_is_idempotent_once_everything_exists() -> None:
    pods = [store(), worker(0), worker(1)]
    first = plan_for(pods=pods)
    again = compute_plan(observed(pods=pods, status=first.status.to_api()), NOW, CFG)
    assert first.creates == again.creates == ()
    assert again.deletes == ()
    assert again.status == first.status
    assert first.status.phase is Phase.RUNNING
    assert first.status.start_time == NOW


@pytest.mark.parametrize(
    ("pods", "expected"),
    [
        pytest.param([store(), worker(0), worker(1)], Phase.RUNNING, id="all-running"),
        pytest.param([store(), worker(0), worker(1, "Pending")], Phase.RUNNING, id="min-reached"),
        pytest.param(
            [store(), worker(0, "Pending"), worker(1, "Pending")], Phase.PENDING, id="none-running"
        ),
    ],
)
def test_phase_follows_running_workers_against_min(pods: list[Any], expected: Phase) -> None:
    assert plan_for(pods=pods).status.phase is expected


def test_unschedulable_pod_shows_the_schedulers_reason_and_job_stays_pending() -> None:
    msg = "Unschedulable: 0/4 nodes are available: 4 Insufficient nvidia.com/gpu."
    pods = [store(), worker(0, "Pending", unschedulable=msg), worker(1, "Pending")]
    plan = plan_for(pods=pods)
    assert plan.status.phase is Phase.PENDING
    cond = next(cd for cd in plan.status.conditions if cd.type == "PodsScheduled")
    assert cond.status == "False"
    assert "Insufficient nvidia.com/gpu" in cond.message


@pytest.mark.parametrize(
    ("rules", "pod", "action", "counted", "phase"),
    [
        pytest.param([], failed(0, 1), "RestartPod", True, Phase.RESTARTING, id="default-restart"),
        pytest.param(
            [], failed(0, 137, "OOMKilled"), "RestartPod", True, Phase.RESTARTING, id="oom-counted"
        ),
        pytest.param(
            [],
            failed(0, 143, disruption_reason="PreemptionByScheduler"),
            "Ignore",
            False,
            Phase.RESTARTING,
            id="preempted-free",
        ),
        pytest.param(
            [],
            failed(0, 0, status_reason="Evicted"),
            "Ignore",
            False,
            Phase.RESTARTING,
            id="evicted-free",
        ),
        pytest.param(
            [{"action": "FailJob", "exitCodes": [3]}],
            failed(0, 3),
            "FailJob",
            False,
            Phase.FAILED,
            id="permanent-exit-code",
        ),
        pytest.param(
            [{"action": "Ignore", "exitCodes": [42]}],
            failed(0, 42),
            "Ignore",
            False,
            Phase.RESTARTING,
            id="user-ignore",
        ),
        pytest.param(
            [{"action": "RestartJob", "reasons": ["OOMKilled"]}],
            failed(0, 137, "OOMKilled"),
            "RestartJob",
            True,
            Phase.RESTARTING,
            id="restart-job-rule",
        ),
        pytest.param(
            [],
            failed(0, 137, status_reason="DeadlineExceeded"),
            "RestartPod",
            True,
            Phase.RESTARTING,
            id="pod-deadline-counted-by-default",
        ),
        pytest.param(
            [{"action": "Ignore", "reasons": ["DeadlineExceeded"]}],
            failed(0, 137, status_reason="DeadlineExceeded"),
            "Ignore",
            False,
            Phase.RESTARTING,
            id="pod-deadline-rule",
        ),
    ],
)
def test_failure_rules(
    rules: list[Any], pod: Any, action: str, counted: bool, phase: Phase
) -> None:
    the_spec = spec(replicas=2, minReplicas=2, failurePolicy={"rules": rules})
    plan = plan_for(
        pods=[store(), pod, worker(1)],
        the_spec=the_spec,
        status={"phase": "Running", "startTime": "2026-11-22T11:00:00Z"},
    )
    lf = plan.status.last_failure
    assert lf is not None
    assert (lf.action, lf.counted, lf.exit_code) == (action, counted, pod.trainer.exit_code)
    assert plan.status.restarts == (1 if counted else 0)
    assert plan.status.phase is phase
    assert pod.uid in plan.status.handled_failures
    if phase is Phase.FAILED:
        assert plan.status.reason == "FailedByRule"
        assert "exit code 3" in (plan.status.message or "")
        assert "llm-worker-1" in deleted(plan)  # no pod keeps holding a GPU
    else:
        assert deleted(plan)["llm-worker-0"] == 0


def test_a_failure_is_counted_once_even_if_seen_again() -> None:
    pods = [store(), failed(0), worker(1)]
    first = plan_for(pods=pods, status={"phase": "Running"})
    again = compute_plan(observed(pods=pods, status=first.status.to_api()), NOW, CFG)
    assert first.status.restarts == again.status.restarts == 1
    assert deleted(again) == {"llm-worker-0": 0}


def test_budget_runs_out_and_job_fails_with_every_pod_cleaned() -> None:
    the_spec = spec(failurePolicy={"backoffLimit": 2})
    plan = plan_for(
        pods=[store(), failed(0, 1), worker(1)],
        the_spec=the_spec,
        status={"phase": "Restarting", "restarts": 2},
    )
    assert plan.status.phase is Phase.FAILED
    assert plan.status.reason == "BackoffLimitExceeded"
    assert plan.status.restarts == 2
    assert set(deleted(plan)) == {"llm-worker-1", "llm-rdzv"}
    assert plan.creates == ()


def test_restart_waits_for_exponential_backoff() -> None:
    the_spec = spec(failurePolicy={"backoffSeconds": 10, "maxBackoffSeconds": 25})
    plan = plan_for(
        pods=[store(), failed(0), worker(1)],
        the_spec=the_spec,
        status={"phase": "Running", "restarts": 2},
    )
    # third counted restart: 10 * 2**2 = 40, capped at 25
    assert plan.status.retry_after == NOW + timedelta(seconds=25)
    assert plan.requeue_after == 25
    assert "llm-worker-0" not in created_names(plan)


# The largest value each duration field accepts, in the states that turn it into a time:
# planning must neither raise (OverflowError wedged a job before the bounds) nor misplan.
LONGEST = spec(
    runPolicy={"activeDeadlineSeconds": 31_536_000, "ttlSecondsAfterFinished": 31_536_000},
    failurePolicy={"backoffLimit": 1000, "backoffSeconds": 86_400, "maxBackoffSeconds": 86_400},
)


@pytest.mark.parametrize(
    ("pods", "status", "expected_wait"),
    [
        pytest.param(
            [store(), worker(0), worker(1)],
            {"phase": "Running", "admissionTime": "2026-11-22T11:00:00Z"},
            31_536_000 - 3600,
            id="deadline-a-year-away",
        ),
        pytest.param(
            [store(), failed(0), worker(1)],
            {"phase": "Running", "restarts": 999},
            86_400,
            id="backoff-capped-at-a-day-after-999-restarts",
        ),
        pytest.param(
            [],
            {"phase": "Succeeded", "completionTime": "2026-11-22T12:00:00Z"},
            31_536_000,
            id="ttl-a-year-away",
        ),
    ],
)
def test_the_longest_durations_plan_a_wait_not_an_overflow(
    pods: list[Any], status: dict[str, Any], expected_wait: float
) -> None:
    plan = plan_for(pods=pods, the_spec=LONGEST, status=status)
    assert plan.requeue_after is not None
    assert plan.requeue_after <= expected_wait


def test_replacement_is_created_once_backoff_elapsed() -> None:
    status = {"phase": "Restarting", "restarts": 1, "retryAfter": "2026-11-22T11:59:59Z"}
    plan = plan_for(pods=[store(), worker(1)], status=status)
    assert created_names(plan) == ["llm-worker-0"]
    assert plan.status.retry_after is None


def test_restart_job_bumps_generation_and_replaces_every_worker() -> None:
    the_spec = spec(
        failurePolicy={"backoffSeconds": 0, "rules": [{"action": "RestartJob", "exitCodes": [9]}]}
    )
    plan = plan_for(
        pods=[store(), failed(0, 9), worker(1)], the_spec=the_spec, status={"phase": "Running"}
    )
    assert plan.status.job_generation == 1
    assert deleted(plan) == {"llm-worker-0": 0, "llm-worker-1": None}
    # worker-1 is still terminating (graceful): its name is reused only once it is gone.
    assert created_names(plan) == ["llm-worker-0"]
    new = next(o for o in plan.creates if o["metadata"]["name"] == "llm-worker-0")
    assert new["metadata"]["labels"][c.LABEL_JOB_GENERATION] == "1"


def test_success_of_any_worker_finishes_the_job_and_frees_gpus() -> None:
    plan = plan_for(pods=[store(), worker(0, "Succeeded"), worker(1)])
    assert plan.status.phase is Phase.SUCCEEDED
    assert plan.status.completion_time == NOW
    assert deleted(plan) == {"llm-worker-1": None, "llm-rdzv": None}


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("Running", {"llm-worker-1", "llm-rdzv"}),
        ("All", {"llm-worker-0", "llm-worker-1", "llm-rdzv"}),
        ("None", set()),
    ],
)
def test_clean_pod_policy(policy: str, expected: set[str]) -> None:
    the_spec = spec(runPolicy={"cleanPodPolicy": policy})
    plan = plan_for(pods=[store(), worker(0, "Succeeded"), worker(1)], the_spec=the_spec)
    assert set(deleted(plan)) == expected


def test_scale_down_deletes_highest_slots_gracefully_and_up_creates() -> None:
    pods = [store(), worker(0), worker(1), worker(2), worker(3)]
    down = plan_for(pods=pods, the_spec=spec(replicas=2))
    assert deleted(down) == {"llm-worker-2": None, "llm-worker-3": None}
    assert down.status.desired_replicas == 2
    up = plan_for(pods=[store(), worker(0)], the_spec=spec(replicas=3))
    assert created_names(up) == ["llm-worker-1", "llm-worker-2"]


def test_scaled_away_pod_that_exits_is_not_a_failure() -> None:
    plan = plan_for(
        pods=[store(), worker(0), failed(2, 143, deleting=True)], the_spec=spec(replicas=2)
    )
    assert plan.status.restarts == 0
    assert plan.status.last_failure is None


def test_suspend_deletes_pods_gracefully_and_resume_recreates() -> None:
    pods = [store(), worker(0), worker(1)]
    plan = plan_for(pods=pods, the_spec=spec(suspend=True), status={"phase": "Running"})
    assert plan.status.phase is Phase.SUSPENDED
    assert set(deleted(plan)) == {"llm-rdzv", "llm-worker-0", "llm-worker-1"}
    assert all(d.grace_seconds is None for d in plan.deletes)
    resumed = plan_for(pods=[], status=plan.status.to_api())
    assert created_names(resumed) == ["llm-rdzv", "llm-worker-0", "llm-worker-1"]


@pytest.mark.parametrize(
    ("nodes", "missing_pvc", "reason"),
    [
        ([node(gpus=1), node("gpu-node-1", gpus=1)], None, "InsufficientGPUCapacity"),
        ([node(gpus=8, ready=False)], None, "InsufficientGPUCapacity"),
        ([node(gpus=8)], "ckpt", "CheckpointVolumeNotFound"),
    ],
)
def test_bad_input_creates_nothing_and_says_why(
    nodes: list[Any], missing_pvc: str | None, reason: str
) -> None:
    plan = plan_for(nodes=nodes, missing_pvc=missing_pvc, service=False)
    assert plan.creates == ()
    assert plan.status.phase is Phase.PENDING
    assert plan.status.reason == reason
    cond = next(cd for cd in plan.status.conditions if cd.type == "SpecValid")
    assert cond.status == "False"
    assert any(e.type == "Warning" and e.reason == "JobPending" for e in plan.events)


def test_invalid_spec_is_reported_not_raised() -> None:
    from trainop.core.plan import Observed

    obs = observed()
    bad = Observed(
        job=obs.job,
        generation=3,
        spec=None,
        spec_error="spec.replicas: too big",
        status=obs.status,
        pods=[],
        service_exists=False,
    )
    plan = compute_plan(bad, NOW, CFG)
    assert plan.creates == ()
    assert plan.status.reason == "InvalidSpec"
    assert plan.status.message == "spec.replicas: too big"


def test_deadline_fails_the_job() -> None:
    the_spec = spec(runPolicy={"activeDeadlineSeconds": 60})
    plan = plan_for(
        pods=[store(), worker(0), worker(1)],
        the_spec=the_spec,
        status={"phase": "Running", "startTime": "2026-11-22T11:58:00Z"},
    )
    assert plan.status.phase is Phase.FAILED
    assert plan.status.reason == "DeadlineExceeded"


def test_pods_on_a_lost_node_are_force_deleted_and_replaced_for_free() -> None:
    lost_since = NOW - timedelta(seconds=120)
    pods = [store(), worker(0, node_name="gpu-node-1"), worker(1)]
    plan = plan_for(
        pods=pods,
        nodes=[node(), node("gpu-node-1", ready=False, not_ready_since=lost_since)],
        status={"phase": "Running"},
    )
    assert deleted(plan) == {"llm-worker-0": 0}
    assert plan.status.last_failure is not None
    assert plan.status.last_failure.reason == "NodeLost"
    assert plan.status.restarts == 0


def test_ttl_deletes_the_finished_job() -> None:
    the_spec = spec(runPolicy={"ttlSecondsAfterFinished": 30})
    status = {"phase": "Succeeded", "completionTime": "2026-11-22T11:59:00Z"}
    assert plan_for(pods=[], the_spec=the_spec, status=status).delete_job
    status["completionTime"] = "2026-11-22T11:59:50Z"
    later = plan_for(pods=[], the_spec=the_spec, status=status)
    assert not later.delete_job
    assert later.requeue_after == 20


def test_progress_is_taken_from_the_most_advanced_pod() -> None:
    pods = [
        store(),
        worker(0, progress={"step": 40, "totalSteps": 200, "loss": 2.5, "time": 1_800_000_000}),
        worker(1, progress={"step": 41, "totalSteps": 200, "loss": 2.4, "time": 1_800_000_001}),
    ]
    progress = plan_for(pods=pods).status.progress
    assert progress is not None
    assert (progress.step, progress.loss, progress.summary) == (41, 2.4, "41/200 (20%)")


def report(step: int, checkpoint: int | None, time: int) -> dict[str, Any]:
    doc: dict[str, Any] = {"step": step, "totalSteps": 200, "time": time}
    if checkpoint is not None:
        doc |= {"checkpointStep": checkpoint, "checkpointTime": time - (step - checkpoint)}
    return doc


T = 1_800_000_000
# each worker's report (None: not reported yet) -> checkpoint shown, and its report's time
NEWEST_CHECKPOINT = {
    # The non-writer's resume point comes in the most advanced report (same step, later).
    "writer's newer save beats a later report": (
        [report(110, 108, T), report(110, 48, T + 1)],
        (108, T - 2),
    ),
    "writer's save beats a more advanced report": (
        [report(108, 108, T), report(109, 48, T + 1)],
        (108, T),
    ),
    "whichever slot writes": ([report(60, 48, T), report(60, 60, T - 1)], (60, T - 1)),
    "only the non-writer has reported": ([None, report(50, 48, T)], (48, T - 2)),
    "no checkpoint yet": ([report(5, None, T), report(6, None, T + 1)], (None, None)),
}


@pytest.mark.parametrize("case", NEWEST_CHECKPOINT, ids=list(NEWEST_CHECKPOINT))
def test_progress_shows_the_newest_durable_checkpoint(case: str) -> None:
    reports, (want_step, want_time) = NEWEST_CHECKPOINT[case]
    pods = [store()] + [
        worker(slot, progress=doc) for slot, doc in enumerate(reports) if doc is not None
    ]
    progress = plan_for(pods=pods).status.progress
    assert progress is not None
    got_time = progress.checkpoint_time.timestamp() if progress.checkpoint_time else None
    assert (progress.checkpoint_step, got_time) == (want_step, want_time)


@pytest.mark.parametrize(
    ("capacity_check", "creates_workers", "reason"),
    [
        pytest.param(True, 0, "InsufficientGPUCapacity", id="checked-holds-the-job"),
        # Autoscaling from zero: pods must exist for the autoscaler to add a node.
        pytest.param(False, 2, "Starting", id="autoscaled-creates-pods"),
    ],
)
def test_capacity_check_can_be_turned_off_for_autoscaled_clusters(
    capacity_check: bool, creates_workers: int, reason: str
) -> None:
    config = replace(CFG, capacity_check=capacity_check)
    plan = compute_plan(observed(nodes=[], service=False), NOW, config)
    workers = [o for o in plan.creates if o["kind"] == "Pod" and "worker" in o["metadata"]["name"]]
    assert len(workers) == creates_workers
    assert plan.status.reason == reason

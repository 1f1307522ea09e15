"""Job lifecycle as tables: deadline, lost nodes in every stage, capacity, success,
pods pending too long, condition shape."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from tests.factories import NOW, failed, node, observed, spec, store, worker
from trainop.api.status import Phase, TrainingJobStatus
from trainop.core.conditions import set_condition
from trainop.core.config import OperatorConfig
from trainop.core.observe import NodeInfo, ObservedPod, Taint, parse_node, parse_pod
from trainop.core.plan import Plan, compute_plan

CFG = OperatorConfig()
# metav1.Condition's validation of reason.
METAV1_REASON = re.compile(r"[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?")
UNSCHEDULABLE = "Unschedulable: 0/4 nodes are available: 4 Insufficient nvidia.com/gpu."


def plan_for(**kw: Any) -> Plan:
    return compute_plan(observed(**kw), NOW, CFG)


def ago(seconds: float) -> str:
    return (NOW - timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def deleted(plan: Plan) -> dict[str, int | None]:
    return {d.name: d.grace_seconds for d in plan.deletes}


def condition(plan: Plan, type_: str) -> Any:
    return next((cd for cd in plan.status.conditions if cd.type == type_), None)


@pytest.mark.parametrize(
    ("status", "pods", "failed_now", "requeue"),
    [
        pytest.param(
            {"phase": "Pending", "admissionTime": ago(61)},
            [store(), worker(0, "Pending", unschedulable=UNSCHEDULABLE)],
            True,
            None,
            id="never-scheduled",
        ),
        pytest.param(
            {"phase": "Pending", "admissionTime": ago(20)},
            [store(), worker(0, "Pending")],
            False,
            40,
            id="not-yet",
        ),
        pytest.param({}, [], False, 60, id="clock-starts-at-admission"),
        pytest.param(
            {"phase": "Running", "startTime": ago(90)},
            [store(), worker(0), worker(1)],
            True,
            None,
            id="status-from-before-admission-time",
        ),
    ],
)
def test_deadline_counts_from_admission(
    status: dict[str, Any], pods: list[ObservedPod], failed_now: bool, requeue: float | None
) -> None:
    the_spec = spec(runPolicy={"activeDeadlineSeconds": 60})
    plan = plan_for(pods=pods, the_spec=the_spec, status=status)
    assert plan.status.admission_time is not None
    if failed_now:
        assert plan.status.phase is Phase.FAILED
        assert plan.status.reason == "DeadlineExceeded"
        assert set(deleted(plan)) == {p.name for p in pods}
    else:
        assert plan.status.phase is not Phase.FAILED
        assert plan.requeue_after == requeue


def test_deadline_fires_even_while_the_spec_cannot_be_scheduled() -> None:
    the_spec = spec(runPolicy={"activeDeadlineSeconds": 60})
    plan = plan_for(
        the_spec=the_spec,
        nodes=[node(gpus=1)],
        status={"phase": "Pending", "admissionTime": ago(61)},
    )
    assert plan.status.reason == "DeadlineExceeded"


def test_suspend_stops_the_deadline_clock_and_resume_restarts_it() -> None:
    the_spec = spec(suspend=True, runPolicy={"activeDeadlineSeconds": 60})
    held = plan_for(
        pods=[], the_spec=the_spec, status={"phase": "Running", "admissionTime": ago(50)}
    )
    assert held.status.admission_time is None
    resumed = compute_plan(
        observed(
            the_spec=spec(runPolicy={"activeDeadlineSeconds": 60}), status=held.status.to_api()
        ),
        NOW,
        CFG,
    )
    assert resumed.status.admission_time == NOW
    assert resumed.requeue_after == 60


LOST = NOW - timedelta(seconds=CFG.node_lost_seconds + 1)


@pytest.mark.parametrize(
    ("the_spec", "status", "pod", "grace"),
    [
        pytest.param(
            spec(suspend=True),
            {"phase": "Suspended"},
            worker(0, deleting=True, node_name="gone"),
            0,
            id="suspended-stuck-terminating",
        ),
        pytest.param(
            spec(suspend=True),
            {"phase": "Running"},
            worker(0, node_name="gone"),
            0,
            id="suspending-on-lost-node",
        ),
        pytest.param(
            spec(),
            {"phase": "Succeeded", "completionTime": ago(5)},
            worker(0, deleting=True, node_name="gone"),
            0,
            id="finished-stuck-terminating",
        ),
        pytest.param(
            spec(runPolicy={"cleanPodPolicy": "None"}),
            {"phase": "Failed", "completionTime": ago(5)},
            worker(0, node_name="gone"),
            None,
            id="clean-pod-policy-none-keeps-live-pods",
        ),
        pytest.param(
            spec(),
            {"phase": "Running", "startTime": ago(100)},
            replace(store(), node_name="gone"),
            0,
            id="store-on-lost-node",
        ),
        pytest.param(
            spec(),
            {"phase": "Running", "startTime": ago(100)},
            failed(0, 143, deleting=True, node_name="gone"),
            0,
            id="dead-worker-stuck-terminating",
        ),
    ],
)
def test_pods_on_a_lost_node_are_force_deleted_in_every_stage(
    the_spec: Any, status: dict[str, Any], pod: ObservedPod, grace: int | None
) -> None:
    nodes = [node(), node("gone", ready=False, not_ready_since=LOST)]
    plan = plan_for(pods=[pod, worker(1)], the_spec=the_spec, status=status, nodes=nodes)
    assert deleted(plan).get(pod.name, "kept") == ("kept" if grace is None else grace)


def test_store_on_a_lost_node_is_replaced_in_the_same_pass() -> None:
    lost_store = replace(store(), node_name="gone")
    plan = plan_for(
        pods=[lost_store, worker(0), worker(1)],
        nodes=[node(), node("gone", ready=False, not_ready_since=LOST)],
        status={"phase": "Running", "startTime": ago(100)},
    )
    assert deleted(plan) == {"llm-rdzv": 0}
    assert [o["metadata"]["name"] for o in plan.creates] == ["llm-rdzv"]


@pytest.mark.parametrize(
    ("status", "reason", "spec_valid"),
    [
        pytest.param({}, "InsufficientGPUCapacity", "False", id="before-first-start"),
        pytest.param(
            {"phase": "Running", "startTime": ago(100)}, "Restarting", "True", id="after-start"
        ),
    ],
)
def test_capacity_is_a_spec_problem_only_before_the_first_start(
    status: dict[str, Any], reason: str, spec_valid: str
) -> None:
    # Every node went NotReady mid-run: the failed worker must still be accounted for.
    down = [node(ready=False, not_ready_since=NOW - timedelta(seconds=5))]
    the_spec = spec(replicas=2, minReplicas=2)
    pods = [store(), failed(0, 1), worker(1)] if status else []
    plan = plan_for(pods=pods, the_spec=the_spec, status=status, nodes=down)
    assert plan.status.reason == reason
    assert condition(plan, "SpecValid").status == spec_valid
    if status:
        assert plan.status.restarts == 1
        assert plan.status.last_failure is not None


NO_INFER = Taint("dedicated", "infer", "NoSchedule")


def placed(name: str, gpus: int, labels: dict[str, str] | None = None, *taints: Taint) -> NodeInfo:
    return replace(node(name, gpus=gpus), labels=labels or {}, taints=taints)


@pytest.mark.parametrize(
    ("scheduling", "nodes", "says"),
    [
        pytest.param(
            {"nodeSelector": {"gpu": "a100"}},
            [placed("big", 8, {"gpu": "a100"}), placed("small", 4, {"gpu": "h100"})],
            None,
            id="selector-matches-the-big-node",
        ),
        pytest.param(
            {"nodeSelector": {"gpu": "h100"}},
            [placed("big", 8, {"gpu": "a100"}), placed("small", 4, {"gpu": "h100"})],
            "1 ready node(s) offer that many nvidia.com/gpu, but the pods' nodeSelector and "
            "tolerations rule them all out (big: label gpu=a100, not h100), and the largest "
            "node the pods may use offers 4",
            id="selector-excludes-the-big-node",
        ),
        pytest.param(
            {"nodeSelector": {"pool": "training"}},
            [placed("big", 8)],
            "(big: no label pool=training), and no ready node is left for the pods",
            id="selector-label-missing",
        ),
        pytest.param(
            {},
            [placed("big", 8, None, NO_INFER)],
            "(big: taint dedicated=infer:NoSchedule is not tolerated)",
            id="untolerated-taint",
        ),
        pytest.param(
            {},
            [placed("big", 8, None, Taint("gpu-broken", "", "NoExecute"))],
            "(big: taint gpu-broken:NoExecute is not tolerated)",
            id="untolerated-noexecute-taint",
        ),
        pytest.param(
            {
                "tolerations": [
                    {
                        "key": "dedicated",
                        "operator": "Equal",
                        "value": "infer",
                        "effect": "NoSchedule",
                    }
                ]
            },
            [placed("big", 8, None, NO_INFER)],
            None,
            id="equal-tolerated",
        ),
        pytest.param(
            {"tolerations": [{"key": "dedicated", "value": "infer"}]},
            [placed("big", 8, None, NO_INFER)],
            None,
            id="operator-defaults-to-equal-effect-empty-matches-all",
        ),
        pytest.param(
            {"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "train"}]},
            [placed("big", 8, None, NO_INFER)],
            "taint dedicated=infer:NoSchedule is not tolerated",
            id="equal-other-value",
        ),
        pytest.param(
            {"tolerations": [{"key": "dedicated", "operator": "Exists"}]},
            [placed("big", 8, None, NO_INFER)],
            None,
            id="exists-any-value",
        ),
        pytest.param(
            {"tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoExecute"}]},
            [placed("big", 8, None, NO_INFER)],
            "taint dedicated=infer:NoSchedule is not tolerated",
            id="other-effect",
        ),
        pytest.param(
            {"tolerations": [{"operator": "Exists"}]},
            [placed("big", 8, None, NO_INFER, Taint("gpu-broken", "", "NoExecute"))],
            None,
            id="empty-key-exists-tolerates-all",
        ),
        pytest.param(
            {"tolerations": [{"key": "dedicated", "operator": "Exists"}]},
            [placed("big", 8, None, NO_INFER, Taint("gpu-broken", "", "NoExecute"))],
            "taint gpu-broken:NoExecute is not tolerated",
            id="every-taint-must-be-tolerated",
        ),
        pytest.param(
            {},
            [placed("small", 4), placed("smaller", 2)],
            "the largest ready node offers 4 nvidia.com/gpu; lower spec.resources.gpus or add "
            "nodes with at least 8 GPUs",
            id="no-node-big-enough",
        ),
    ],
)
def test_capacity_counts_only_nodes_the_pods_may_land_on(
    scheduling: dict[str, Any], nodes: list[NodeInfo], says: str | None
) -> None:
    the_spec = spec(resources={"gpus": 8}, scheduling=scheduling)
    plan = plan_for(the_spec=the_spec, nodes=nodes, service=False)
    if says is None:
        assert condition(plan, "SpecValid").status == "True"
        assert "llm-worker-0" in {o["metadata"]["name"] for o in plan.creates}
        return
    assert plan.creates == ()
    assert plan.status.reason == "InsufficientGPUCapacity"
    assert condition(plan, "SpecValid").status == "False"
    assert says in condition(plan, "SpecValid").message
    assert any(e.type == "Warning" and says in e.message for e in plan.events)


def test_capacity_reads_placement_from_the_pod_template_override() -> None:
    the_spec = spec(
        resources={"gpus": 8},
        scheduling={"nodeSelector": {"gpu": "h100"}},
        podTemplate={"spec": {"nodeSelector": {"gpu": "a100"}}},
    )
    nodes = [placed("big", 8, {"gpu": "a100"}), placed("small", 4, {"gpu": "h100"})]
    plan = plan_for(the_spec=the_spec, nodes=nodes, service=False)
    assert condition(plan, "SpecValid").status == "True"


@pytest.mark.parametrize(
    ("raw", "labels", "taints"),
    [
        pytest.param(
            {
                "metadata": {"name": "n", "labels": {"gpu": "a100"}},
                "spec": {
                    "taints": [
                        {"key": "dedicated", "value": "infer", "effect": "NoSchedule"},
                        {"key": "spot", "effect": "PreferNoSchedule"},
                        {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"},
                    ]
                },
            },
            {"gpu": "a100"},
            (NO_INFER, Taint("node.kubernetes.io/unreachable", "", "NoExecute")),
            id="prefer-no-schedule-is-not-a-barrier",
        ),
        pytest.param({"metadata": {"name": "n"}}, {}, (), id="bare"),
    ],
)
def test_parse_node_keeps_labels_and_the_taints_that_keep_pods_off(
    raw: dict[str, Any], labels: dict[str, str], taints: tuple[Taint, ...]
) -> None:
    parsed = parse_node(raw)
    assert (parsed.labels, parsed.taints) == (labels, taints)


@pytest.mark.parametrize(
    ("pods", "phase"),
    [
        pytest.param([store(), worker(0, "Succeeded"), worker(1)], Phase.SUCCEEDED, id="done"),
        pytest.param(
            [store(), worker(0), worker(1), worker(2, "Succeeded")],
            Phase.RUNNING,
            id="scaled-away-exit-0",
        ),
        pytest.param(
            [store(), worker(0), worker(1, "Succeeded", deleting=True)],
            Phase.RUNNING,
            id="deleting-exit-0",
        ),
    ],
)
def test_only_a_worker_that_ended_on_its_own_finishes_the_job(
    pods: list[ObservedPod], phase: Phase
) -> None:
    plan = plan_for(pods=pods, the_spec=spec(replicas=2), status={"phase": "Running"})
    assert plan.status.phase is phase


PULL = 'ImagePullBackOff: container trainer: Back-off pulling image "trainer:typo"'


@pytest.mark.parametrize(
    ("statuses", "waiting"),
    [
        pytest.param(
            {
                "containerStatuses": [
                    {
                        "name": "trainer",
                        "state": {
                            "waiting": {
                                "reason": "ImagePullBackOff",
                                "message": 'Back-off pulling image "trainer:typo"',
                            }
                        },
                    }
                ]
            },
            PULL,
            id="image-pull-backoff",
        ),
        pytest.param(
            {
                "initContainerStatuses": [
                    {
                        "name": "exporter",
                        "state": {
                            "waiting": {
                                "reason": "InvalidImageName",
                                "message": 'Failed to apply default image tag "Bad:Tag"',
                            }
                        },
                    }
                ],
                "containerStatuses": [
                    {"name": "trainer", "state": {"waiting": {"reason": "PodInitializing"}}}
                ],
            },
            'InvalidImageName: container exporter: Failed to apply default image tag "Bad:Tag"',
            id="init-container-blocks-the-trainer",
        ),
        pytest.param(
            {
                "containerStatuses": [
                    {
                        "name": "trainer",
                        "state": {"waiting": {"reason": "CreateContainerConfigError"}},
                    }
                ]
            },
            "CreateContainerConfigError: container trainer",
            id="no-message",
        ),
        pytest.param(
            {
                "containerStatuses": [
                    {"name": "trainer", "state": {"waiting": {"reason": "ContainerCreating"}}}
                ]
            },
            None,
            id="still-creating",
        ),
        pytest.param(
            {"containerStatuses": [{"name": "trainer", "state": {"running": {}}}]},
            None,
            id="running",
        ),
        pytest.param({}, None, id="not-scheduled-yet"),
    ],
)
def test_parse_pod_says_why_a_container_cannot_start(
    statuses: dict[str, Any], waiting: str | None
) -> None:
    pod = parse_pod(
        {"metadata": {"name": "llm-worker-0"}, "status": {"phase": "Pending", **statuses}}
    )
    assert pod.waiting == waiting


def test_a_retried_image_pull_does_not_rewrite_the_condition() -> None:
    """ErrImagePull and ImagePullBackOff alternate, with new words, for one bad image."""
    the_spec = spec(replicas=2)
    status = {"phase": "Running", "pendingSince": ago(CFG.pending_timeout_seconds + 1)}
    pulls = [
        PULL,
        'ErrImagePull: container trainer: rpc error: pull access denied for "trainer:typo"',
        PULL,
    ]
    conditions = []
    for waiting in pulls:
        seen = [store(), worker(0), worker(1, "Pending", waiting=waiting)]
        plan = plan_for(pods=seen, the_spec=the_spec, status=status)
        status = plan.status.to_api()
        conditions.append(condition(plan, "PendingTooLong"))
    assert conditions[0] is not None
    assert conditions[0].reason == "ImagePullBackOff"
    assert conditions == [conditions[0]] * 3


@pytest.mark.parametrize(
    ("pods", "since", "status", "reason", "says"),
    [
        pytest.param(
            [worker(0, "Pending", unschedulable=UNSCHEDULABLE)],
            CFG.pending_timeout_seconds + 1,
            "True",
            "Unschedulable",
            "llm-worker-0: 0/4 nodes are available: 4 Insufficient nvidia.com/gpu.",
            id="unschedulable-too-long",
        ),
        pytest.param(
            [worker(0, "Pending")],
            CFG.pending_timeout_seconds + 1,
            "True",
            "NotStarted",
            "llm-worker-0: scheduled, but its containers have not started",
            id="scheduled-never-started",
        ),
        pytest.param(
            [worker(0, "Pending", waiting=PULL)],
            CFG.pending_timeout_seconds + 1,
            "True",
            "ImagePullBackOff",
            'llm-worker-0: container trainer: Back-off pulling image "trainer:typo"',
            id="bad-image",
        ),
        pytest.param(
            [
                worker(0, "Pending", unschedulable=UNSCHEDULABLE),
                worker(2, "Pending", waiting=PULL),
            ],
            CFG.pending_timeout_seconds + 1,
            "True",
            "ImagePullBackOff",
            "llm-worker-2: container trainer: Back-off pulling image",
            id="bad-image-beats-the-scheduler",
        ),
        pytest.param(
            [worker(0, "Pending", unschedulable=UNSCHEDULABLE)], 10, None, None, None, id="not-yet"
        ),
    ],
)
def test_a_pod_pending_too_long_gets_a_condition_with_the_reason(
    pods: list[ObservedPod], since: float, status: str | None, reason: str | None, says: str | None
) -> None:
    the_spec = spec(replicas=3)
    seen = [store(), *pods, worker(1)]
    plan = plan_for(
        pods=seen, the_spec=the_spec, status={"phase": "Running", "pendingSince": ago(since)}
    )
    cond = condition(plan, "PendingTooLong")
    if status is None:
        assert cond is None
        assert plan.requeue_after == CFG.pending_timeout_seconds - since
        return
    assert (cond.status, cond.reason) == (status, reason)
    assert says in cond.message
    warned = [e for e in plan.events if e.reason == "PendingTooLong"]
    assert [e.type for e in warned] == ["Warning"]
    assert says in warned[0].message
    # Said once, not on every reconcile; cleared when the pods run.
    later = NOW + timedelta(seconds=60)
    again = compute_plan(
        observed(pods=seen, the_spec=the_spec, status=plan.status.to_api()), later, CFG
    )
    assert not any(e.reason == "PendingTooLong" for e in again.events)
    assert condition(again, "PendingTooLong") == cond  # no status write per reconcile
    running = [store(), worker(0), worker(1), worker(2)]
    started = compute_plan(
        observed(pods=running, the_spec=the_spec, status=again.status.to_api()), NOW, CFG
    )
    assert condition(started, "PendingTooLong").status == "False"
    assert started.status.pending_since is None


@pytest.mark.parametrize(
    ("timeout", "waited", "flagged", "requeue"),
    [
        pytest.param(30.0, 31, True, None, id="short-timeout-passed"),
        pytest.param(30.0, 20, False, 10.0, id="short-timeout-not-yet"),
        pytest.param(1800.0, 600, False, 1200.0, id="long-timeout-for-big-images"),
    ],
)
def test_the_pending_timeout_comes_from_the_operator_config(
    timeout: float, waited: float, flagged: bool, requeue: float | None
) -> None:
    config = replace(CFG, pending_timeout_seconds=timeout)
    obs = observed(
        pods=[store(), worker(0, "Pending"), worker(1)],
        status={"phase": "Running", "pendingSince": ago(waited)},
    )
    plan = compute_plan(obs, NOW, config)
    cond = condition(plan, "PendingTooLong")
    if flagged:
        assert cond.status == "True"
        assert f"for over {int(timeout)}s" in cond.message
    else:
        assert cond is None
        assert plan.requeue_after == requeue


@pytest.mark.parametrize(
    ("the_spec", "pods", "status"),
    [
        pytest.param(spec(), [store(), worker(0), worker(1)], {}, id="running"),
        pytest.param(spec(suspend=True), [], {"phase": "Running"}, id="suspended"),
        pytest.param(
            spec(), [store(), failed(0, 1), worker(1)], {"phase": "Running"}, id="restart"
        ),
        pytest.param(spec(), [store(), worker(0, "Succeeded")], {"phase": "Running"}, id="done"),
    ],
)
def test_every_condition_has_a_reason(
    the_spec: Any, pods: list[ObservedPod], status: dict[str, Any]
) -> None:
    # Walk through phases so inactive phase conditions exist too.
    seen = TrainingJobStatus.model_validate(status)
    for _ in range(2):
        plan = compute_plan(observed(pods=pods, the_spec=the_spec, status=seen.to_api()), NOW, CFG)
        seen = plan.status
    assert seen.conditions
    for cond in seen.conditions:
        assert METAV1_REASON.fullmatch(cond.reason), cond


def test_set_condition_refuses_an_empty_reason() -> None:
    with pytest.raises(ValueError, match="non-empty reason"):
        set_condition([], "Running", False, "", "", NOW, 1)

"""A job queued in Kueue (core/plan/queue.py, core/kueue.py) as tables: what Kueue's
Workload says in, what trainop creates, deletes, writes and says out."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from tests.factories import JOB, NOW, observed, spec, store, worker, workload_obj
from trainop.api import constants as c
from trainop.api.status import Phase
from trainop.core import kueue
from trainop.core.config import OperatorConfig
from trainop.core.plan import COND_QUEUE_ADMITTED, Plan, compute_plan

CFG = OperatorConfig()
QUEUED_JOB = replace(JOB, labels={c.LABEL_KUEUE_QUEUE: "research"})
FLAVOR = kueue.Flavor(
    "gpu-a",
    {"pool": "h100"},
    [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
)
PENDING = {"QuotaReserved": (False, "Pending", "couldn't assign flavors: 4 more needed")}
ADMITTED = {"QuotaReserved": (True, "QuotaReserved", ""), "Admitted": (True, "Admitted", "")}
EVICTED = {**ADMITTED, "Evicted": (True, "Preempted", "Preempted to accommodate a workload")}


def view(wl: dict[str, Any] | None = None, **kw: Any) -> kueue.QueueView:
    return kueue.QueueView(
        served=True,
        workload=kueue.parse_workload(wl) if wl is not None else None,
        flavors={"gpu-a": FLAVOR},
        **kw,
    )


def plan_for(queue: kueue.QueueView | None, pods: list[Any] | None = None, **kw: Any) -> Plan:
    return compute_plan(observed(pods=pods, job=QUEUED_JOB, queue=queue, **kw), NOW, CFG)


def condition(plan: Plan) -> tuple[str, str, str]:
    cond = next(x for x in plan.status.conditions if x.type == COND_QUEUE_ADMITTED)
    return cond.status, cond.reason, cond.message


def pods_created(plan: Plan) -> list[dict[str, Any]]:
    return [o for o in plan.creates if o["kind"] == "Pod"]


@pytest.mark.parametrize(
    ("queue", "reason", "says"),
    [
        pytest.param(
            kueue.QueueView(served=False),
            "KueueNotInstalled",
            'externalFrameworks: ["TrainingJob.v1alpha1.trainop.dev"]',
            id="no-kueue",
        ),
        pytest.param(view(), "QueuedInKueue", "Workload trainingjob-llm-", id="new"),
        pytest.param(
            view(workload_obj(conditions=PENDING)),
            "QueuedInKueue",
            "LocalQueue research): couldn't assign flavors: 4 more needed",
            id="kueue-says-why",
        ),
        pytest.param(
            view(workload_obj()),
            "QueuedInKueue",
            "waiting for Kueue to admit Workload",
            id="kueue-said-nothing-yet",
        ),
        pytest.param(
            view(workload_obj(conditions={"Finished": (True, "FailedToStart", "bad")})),
            "WorkloadFinished",
            "(FailedToStart: bad) but the job is not",
            id="workload-finished-by-kueue",
        ),
    ],
)
def test_a_queued_job_waits_and_its_condition_names_who_it_waits_for(
    queue: kueue.QueueView, reason: str, says: str
) -> None:
    plan = plan_for(queue)
    assert pods_created(plan) == []
    assert plan.status.phase is Phase.SUSPENDED
    assert plan.status.reason == reason
    status, cond_reason, message = condition(plan)
    assert (status, cond_reason) == ("False", reason)
    assert says in message
    assert plan.status.message == message  # kubectl get tj shows it too
    assert [e.reason for e in plan.events if e.reason == reason] == [reason]


def test_no_kueue_is_looked_at_again_and_writes_nothing_to_kueue() -> None:
    plan = plan_for(kueue.QueueView(served=False))
    assert plan.workload == ()
    assert plan.requeue_after is not None
    assert plan.requeue_after <= 30
    assert next(e for e in plan.events if e.reason == "KueueNotInstalled").type == "Warning"


def test_a_new_queued_job_creates_its_workload() -> None:
    plan = plan_for(view())
    (write,) = plan.workload
    assert write.verb == "create"
    wl = write.body
    assert wl["apiVersion"] == "kueue.x-k8s.io/v1beta2"
    assert wl["spec"]["queueName"] == "research"
    assert "priorityClassRef" not in wl["spec"]
    assert wl["metadata"]["ownerReferences"][0]["uid"] == JOB.uid
    workers, store_set = wl["spec"]["podSets"]
    # Partial admission: at least minReplicas of the replicas.
    assert (workers["name"], workers["count"], workers["minCount"]) == ("workers", 2, 1)
    assert (store_set["name"], store_set["count"]) == ("store", 1)
    trainer = workers["template"]["spec"]["containers"][0]
    assert trainer["resources"]["requests"]["nvidia.com/gpu"] == "2"
    # The pods never carry the queue label: Kueue's pod integration would count them again.
    assert c.LABEL_KUEUE_QUEUE not in workers["template"]["metadata"]["labels"]


@pytest.mark.parametrize(
    ("the_spec", "min_count"),
    [
        pytest.param(spec(), 1, id="elastic"),
        pytest.param(spec(minReplicas=None, maxReplicas=None), None, id="fixed-size"),
        pytest.param(spec(minReplicas=2), None, id="min-equals-replicas"),
    ],
)
def test_min_count_is_min_replicas_of_an_elastic_job(the_spec: Any, min_count: int | None) -> None:
    (write,) = plan_for(view(), the_spec=the_spec).workload
    assert write.body["spec"]["podSets"][0].get("minCount") == min_count


def test_the_workload_carries_the_jobs_priority_class() -> None:
    the_spec = spec(scheduling={"priorityClassName": "high"})
    (write,) = plan_for(view(priority=1000), the_spec=the_spec).workload
    assert write.body["spec"]["priorityClassRef"] == {
        "group": "scheduling.k8s.io",
        "kind": "PriorityClass",
        "name": "high",
    }
    assert write.body["spec"]["priority"] == 1000
    missing = plan_for(view(priority_class_missing=True), the_spec=the_spec)
    assert missing.workload == ()
    assert condition(missing)[1] == "PriorityClassNotFound"


@pytest.mark.parametrize(
    ("wl", "replaced"),
    [
        pytest.param(workload_obj(counts=(3, 1)), True, id="count-changed"),
        pytest.param(workload_obj(queue="other"), True, id="queue-changed"),
        pytest.param(workload_obj(counts=(2, 1)), False, id="same"),
        pytest.param(workload_obj(counts=(2, None)), False, id="min-count-dropped-by-kueue"),
        pytest.param(workload_obj(counts=(2, 2)), True, id="min-count-changed"),
        pytest.param(
            workload_obj(counts=(3, 1), conditions=ADMITTED, admitted={"workers": 3}),
            False,
            id="admitted-is-kept",
        ),
    ],
)
def test_an_unadmitted_workload_of_an_older_spec_is_replaced(
    wl: dict[str, Any], replaced: bool
) -> None:
    plan = plan_for(view(wl))
    assert [w.verb for w in plan.workload] == (["delete"] if replaced else [])


def test_a_queued_workload_with_the_jobs_priority_class_is_kept() -> None:
    """The PriorityClass's value is looked up only to create the Workload: one that names
    the job's class is current without it (it was once replaced over and over, and a
    preemptor lost its place to the job it had preempted)."""
    wl = workload_obj(conditions=PENDING)
    wl["spec"]["priorityClassRef"] = {
        "group": "scheduling.k8s.io",
        "kind": "PriorityClass",
        "name": "high",
    }
    wl["spec"]["priority"] = 1000
    the_spec = spec(scheduling={"priorityClassName": "high"})
    assert plan_for(view(wl), the_spec=the_spec).workload == ()
    (write,) = plan_for(view(wl), the_spec=spec()).workload  # the class was removed
    assert write.verb == "delete"


def test_admission_starts_the_job_on_the_admitted_flavor() -> None:
    wl = workload_obj(conditions=ADMITTED, admitted={"workers": 2, "store": 1})
    plan = plan_for(view(wl))
    pods = {p["metadata"]["name"]: p for p in pods_created(plan)}
    assert set(pods) == {"llm-rdzv", "llm-worker-0", "llm-worker-1"}
    for pod in pods.values():
        assert pod["spec"]["nodeSelector"] == {"pool": "h100"}
        assert FLAVOR.tolerations[0] in pod["spec"]["tolerations"]
    assert condition(plan) == (
        "True",
        "Admitted",
        "admitted by Kueue to ClusterQueue gpus: 2 of 2 worker(s) on flavor(s) gpu-a",
    )
    assert plan.status.phase is Phase.PENDING
    assert plan.workload == ()


def test_partial_admission_runs_the_admitted_count() -> None:
    wl = workload_obj(conditions=ADMITTED, admitted={"workers": 1, "store": 1})
    plan = plan_for(view(wl), the_spec=spec(replicas=3, minReplicas=1))
    names = sorted(p["metadata"]["name"] for p in pods_created(plan))
    assert names == ["llm-rdzv", "llm-worker-0"]
    assert plan.status.workers == "0/1"
    assert "1 of 3 worker(s)" in condition(plan)[2]
    running = plan_for(
        view(wl),
        pods=[store(), worker(0)],
        the_spec=spec(replicas=3, minReplicas=1),
        status=plan.status.to_api(),
    )
    assert pods_created(running) == []
    assert running.status.phase is Phase.RUNNING


@pytest.mark.parametrize(
    ("held", "pods", "written"),
    [
        pytest.param(None, [store(), worker(0)], ("True", "Started"), id="started"),
        pytest.param(None, [store(), worker(0, "Pending")], None, id="not-yet"),
        pytest.param(None, [worker(0)], None, id="no-store-yet"),
        pytest.param((True, "Started"), [store(), worker(0)], None, id="already-said"),
        pytest.param(
            (True, "Started"), [store()], ("False", "WaitForRecovery"), id="lost-its-workers"
        ),
        pytest.param(
            (False, "WaitForRecovery"), [store(), worker(1)], ("True", "Recovered"), id="recovered"
        ),
    ],
)
def test_pods_ready_tells_kueue_the_job_runs(
    held: tuple[bool, str] | None, pods: list[Any], written: tuple[str, str] | None
) -> None:
    """minReplicas (1) workers running and the store: Kueue's waitForPodsReady is met."""
    conds = dict(ADMITTED)
    if held is not None:
        conds["PodsReady"] = (held[0], held[1], "")
    wl = workload_obj(conditions=conds, admitted={"workers": 2, "store": 1})
    plan = plan_for(view(wl), pods=pods, status={"phase": "Running"})
    patches = [w for w in plan.workload if w.verb == "status"]
    if written is None:
        assert patches == []
        return
    (patch,) = patches
    assert patch.body["metadata"] == {"resourceVersion": "42"}
    ready = next(x for x in patch.body["status"]["conditions"] if x["type"] == "PodsReady")
    assert (ready["status"], ready["reason"]) == written


def test_an_admitted_running_job_is_left_alone() -> None:
    wl = workload_obj(
        conditions={**ADMITTED, "PodsReady": (True, "Started", "")},
        admitted={"workers": 2, "store": 1},
    )
    pods = [store(), worker(0), worker(1)]
    first = plan_for(view(wl), pods=pods)
    again = plan_for(view(wl), pods=pods, status=first.status.to_api())
    assert again.creates == again.deletes == again.workload == ()
    assert again.status == first.status
    assert again.events == ()


def test_eviction_stops_the_workers_gracefully_without_counting_it() -> None:
    wl = workload_obj(conditions=EVICTED, admitted={"workers": 2, "store": 1})
    pods = [store(), worker(0), worker(1)]
    plan = plan_for(view(wl), pods=pods, status={"phase": "Running", "restarts": 0})
    assert {d.name: d.grace_seconds for d in plan.deletes} == {
        "llm-rdzv": None,
        "llm-worker-0": None,
        "llm-worker-1": None,
    }
    assert plan.status.phase is Phase.SUSPENDED
    assert plan.status.reason == "EvictedByKueue"
    assert "Preempted to accommodate a workload" in plan.status.message
    assert plan.status.restarts == 0
    # The quota goes back only once the pods are gone (their GPUs are free).
    assert plan.workload == ()


def test_once_the_evicted_pods_are_gone_the_quota_goes_back() -> None:
    wl = workload_obj(conditions=EVICTED, admitted={"workers": 2, "store": 1})
    terminating = [worker(0, deleting=True)]
    assert plan_for(view(wl), pods=terminating).workload == ()
    plan = plan_for(view(wl), pods=[worker(0, "Failed", deleting=True)])
    (write,) = plan.workload
    assert (write.verb, write.name, write.uid) == ("status", kueue.workload_name(JOB), "wl-1")
    assert write.body["metadata"] == {"resourceVersion": "42"}
    assert write.body["status"]["admission"] is None
    conds = {x["type"]: x for x in write.body["status"]["conditions"]}
    assert (conds["QuotaReserved"]["status"], conds["QuotaReserved"]["reason"]) == (
        "False",
        "Pending",
    )
    assert (conds["Requeued"]["status"], conds["Requeued"]["reason"]) == ("True", "Preempted")
    assert conds["Admitted"]["status"] == "False"
    assert conds["Evicted"]["lastTransitionTime"] == "2026-11-22T11:00:00Z"  # untouched


@pytest.mark.parametrize(
    ("phase", "reason"),
    [pytest.param("Succeeded", "Succeeded", id="succeeded"), ("Failed", "Failed")],
)
def test_a_finished_job_finishes_its_workload(phase: str, reason: str) -> None:
    wl = workload_obj(conditions=ADMITTED, admitted={"workers": 2, "store": 1})
    plan = plan_for(
        view(wl),
        status={"phase": phase, "message": "done", "completionTime": "2026-11-22T11:59:00Z"},
    )
    (write,) = plan.workload
    finished = next(x for x in write.body["status"]["conditions"] if x["type"] == "Finished")
    assert (finished["status"], finished["reason"], finished["message"]) == (
        "True",
        reason,
        "done",
    )
    already = workload_obj(conditions={**ADMITTED, "Finished": (True, reason, "done")})
    assert plan_for(view(already), status={"phase": phase}).workload == ()


def test_a_job_without_the_label_never_looks_at_kueue() -> None:
    plan = compute_plan(observed(queue=None), NOW, CFG)
    assert plan.workload == ()
    assert not any(x.type == COND_QUEUE_ADMITTED for x in plan.status.conditions)
    assert len(pods_created(plan)) == 3


def test_suspending_a_queued_job_deactivates_its_workload_and_resuming_reactivates_it() -> None:
    wl = workload_obj(conditions=ADMITTED, admitted={"workers": 2, "store": 1})
    plan = plan_for(view(wl), pods=[store(), worker(0)], the_spec=spec(suspend=True))
    assert plan.status.reason == "Suspended"
    assert {d.name for d in plan.deletes} == {"llm-rdzv", "llm-worker-0"}
    (write,) = plan.workload
    assert (write.verb, write.body) == ("patch", {"spec": {"active": False}})
    inactive = workload_obj(conditions=PENDING)
    inactive["spec"]["active"] = False
    (write,) = plan_for(view(inactive)).workload
    assert (write.verb, write.body) == ("patch", {"spec": {"active": True}})
    (created,) = plan_for(view(), the_spec=spec(suspend=True)).workload
    assert created.body["spec"]["active"] is False


def test_removing_the_label_lets_the_job_run_and_deletes_its_workload() -> None:
    wl = workload_obj(conditions=ADMITTED, admitted={"workers": 2, "store": 1})
    was_queued = {
        "conditions": [
            {
                "type": COND_QUEUE_ADMITTED,
                "status": "True",
                "reason": "Admitted",
                "message": "admitted",
                "lastTransitionTime": "2026-11-22T11:00:00Z",
            }
        ]
    }
    pods = [store(), worker(0), worker(1)]
    plan = compute_plan(observed(pods=pods, queue=view(wl), status=was_queued), NOW, CFG)
    assert [(w.verb, w.uid) for w in plan.workload] == [("delete", "wl-1")]
    assert plan.deletes == ()
    assert condition(plan)[1] == "Admitted"  # kept until the Workload is gone
    gone = compute_plan(observed(pods=pods, queue=view(), status=plan.status.to_api()), NOW, CFG)
    assert gone.workload == ()
    assert not any(x.type == COND_QUEUE_ADMITTED for x in gone.status.conditions)

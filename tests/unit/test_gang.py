"""Gang scheduling (core/gang.py, core/plan/gang.py) as tables."""

from __future__ import annotations

from typing import Any

import pytest

from tests.factories import NOW, observed, spec, store, worker
from trainop.api import constants as c
from trainop.api.status import Phase
from trainop.core import gang
from trainop.core.config import OperatorConfig
from trainop.core.plan import Plan, compute_plan
from trainop.core.plan.model import COND_GANG_SCHEDULED

CFG = OperatorConfig()
VOLCANO, COSCHED = c.VOLCANO_API_VERSION, c.COSCHEDULING_API_VERSION
BOTH = {VOLCANO: True, COSCHED: True}


def gang_spec(api: str = "Auto", scheduler: str | None = None, **gang_kw: Any) -> Any:
    scheduling: dict[str, Any] = {"gang": {"podGroupAPIVersion": api, **gang_kw}}
    if scheduler:
        scheduling["schedulerName"] = scheduler
    return spec(scheduling=scheduling)


def plan_for(served: dict[str, bool], groups: dict[str, Any] | None = None, **kw: Any) -> Plan:
    view = gang.GangView(served=served, pod_groups=groups or {})
    kw.setdefault("the_spec", gang_spec())
    return compute_plan(observed(gang=view, **kw), NOW, CFG)


def condition(plan: Plan) -> tuple[str, str, str]:
    cond = next(x for x in plan.status.conditions if x.type == COND_GANG_SCHEDULED)
    return cond.status, cond.reason, cond.message


@pytest.mark.parametrize(
    ("api", "scheduler", "served", "chosen"),
    [
        pytest.param("Auto", None, {VOLCANO: True}, VOLCANO, id="auto-volcano-only"),
        pytest.param("Auto", None, {COSCHED: True}, COSCHED, id="auto-coscheduling-only"),
        pytest.param("Auto", "volcano", BOTH, VOLCANO, id="auto-both-volcano-scheduler"),
        pytest.param("Auto", "sp-scheduler", BOTH, COSCHED, id="auto-both-other-scheduler"),
        pytest.param("Auto", None, {}, None, id="auto-none"),
        pytest.param(VOLCANO, None, BOTH, VOLCANO, id="explicit-volcano"),
        pytest.param(COSCHED, "volcano", BOTH, COSCHED, id="explicit-wins"),
        pytest.param(VOLCANO, None, {COSCHED: True}, None, id="explicit-not-served"),
    ],
)
def test_choose_api(api: str, scheduler: str | None, served: dict[str, bool], chosen: str) -> None:
    assert gang.choose_api(gang_spec(api, scheduler), served) == chosen


def test_no_gang_asked_no_api_chosen() -> None:
    assert gang.choose_api(spec(), BOTH) is None


@pytest.mark.parametrize(
    ("api", "expected"),
    [
        pytest.param(
            VOLCANO,
            {
                "minMember": 1,
                "minResources": {"nvidia.com/gpu": "2"},
                "queue": "research",
                "priorityClassName": "high",
            },
            id="volcano",
        ),
        pytest.param(
            COSCHED,
            {"minMember": 1, "minResources": {"nvidia.com/gpu": "2"}, "scheduleTimeoutSeconds": 90},
            id="coscheduling",
        ),
    ],
)
def test_pod_group_min_member_is_min_replicas(api: str, expected: dict[str, Any]) -> None:
    from tests.factories import JOB

    the_spec = spec(
        scheduling={
            "priorityClassName": "high",
            "gang": {"queue": "research", "scheduleTimeoutSeconds": 90},
        }
    )
    group = gang.build_pod_group(JOB, the_spec, api)
    assert group["apiVersion"] == api
    assert group["metadata"]["name"] == "llm"
    assert group["metadata"]["ownerReferences"][0]["uid"] == JOB.uid
    assert group["spec"] == expected


def test_a_fixed_size_gang_needs_every_replica() -> None:
    from tests.factories import JOB

    fixed = spec(minReplicas=None, maxReplicas=None, replicas=3, scheduling={"gang": {}})
    assert gang.build_pod_group(JOB, fixed, COSCHED)["spec"]["minMember"] == 3


@pytest.mark.parametrize(
    ("api", "where", "key"),
    [
        pytest.param(VOLCANO, "annotations", "scheduling.k8s.io/group-name", id="volcano"),
        pytest.param(COSCHED, "labels", "scheduling.x-k8s.io/pod-group", id="coscheduling"),
    ],
)
def test_the_pod_group_comes_first_and_workers_are_its_members(
    api: str, where: str, key: str
) -> None:
    plan = plan_for({api: True}, the_spec=gang_spec(api), service=False)
    first_pod = next(i for i, o in enumerate(plan.creates) if o["kind"] == "Pod")
    kinds = [o["kind"] for o in plan.creates]
    assert kinds.index("PodGroup") < first_pod
    for obj in plan.creates:
        if obj["kind"] != "Pod":
            continue
        marks = obj["metadata"].get(where, {})
        if obj["metadata"]["labels"][c.LABEL_ROLE] == c.ROLE_WORKER:
            assert marks[key] == "llm"
        else:  # the store needs no GPU and must not wait for the gang
            assert key not in marks
    assert condition(plan)[1] == "WaitingForGangScheduler"


def test_an_existing_pod_group_is_not_created_again() -> None:
    plan = plan_for({COSCHED: True}, groups={COSCHED: {"status": {"phase": "Scheduling"}}})
    assert "PodGroup" not in [o["kind"] for o in plan.creates]
    status, reason, message = condition(plan)
    assert (status, reason) == ("False", "WaitingForGangScheduler")
    assert "phase Scheduling" in message
    assert "minMember 1" in message


def test_without_a_pod_group_api_the_job_waits_and_says_so() -> None:
    plan = plan_for({VOLCANO: False, COSCHED: False})
    assert plan.creates == ()
    assert plan.status.phase is Phase.PENDING
    assert plan.status.reason == "PodGroupAPINotInstalled"
    status, reason, message = condition(plan)
    assert (status, reason) == ("False", "PodGroupAPINotInstalled")
    assert "scheduling.volcano.sh/v1beta1 or scheduling.x-k8s.io/v1alpha1" in message
    assert [e.type for e in plan.events if e.reason == "PodGroupAPINotInstalled"] == ["Warning"]
    assert plan.requeue_after is not None


def test_gang_scheduled_once_min_member_run() -> None:
    groups = {COSCHED: {"status": {"phase": "Running"}}}
    plan = plan_for({COSCHED: True}, groups=groups, pods=[store(), worker(0), worker(1)])
    assert condition(plan)[:2] == ("True", "Scheduled")
    assert plan.creates == ()

"""Capacity-aware creation (the pure plan): never more worker pods than the usable nodes
can place, beyond minReplicas; an elastic job starts with what fits and grows as nodes
come; the conditions count exactly."""

from __future__ import annotations

from typing import Any

import pytest

from tests.factories import NOW, node, observed, spec, store, worker
from trainop.core.config import OperatorConfig
from trainop.core.plan import REASON_NO_CAPACITY, compute_plan

CFG = OperatorConfig()


def workers_created(plan: Any) -> int:
    return sum(
        1 for o in plan.creates if o["metadata"]["labels"].get("trainop.dev/role") == "worker"
    )


def pods_scheduled(plan: Any) -> tuple[str, str, str]:
    cond = next(c for c in plan.status.conditions if c.type == "PodsScheduled")
    return cond.status, cond.reason, cond.message


@pytest.mark.parametrize(
    ("job", "nodes", "created"),
    [
        pytest.param(
            {"replicas": 1024, "minReplicas": 1, "maxReplicas": 1024, "resources": {"gpus": 1}},
            [node(f"n{i}", gpus=4) for i in range(5)],
            20,
            id="1024-replicas-on-20-gpus",
        ),
        pytest.param(
            {"replicas": 8, "minReplicas": 2, "maxReplicas": 8, "resources": {"gpus": 2}},
            [node("a", gpus=8)],
            4,
            id="elastic-starts-with-what-fits",
        ),
        pytest.param(
            {"replicas": 8, "minReplicas": 2, "maxReplicas": 8, "resources": {"gpus": 3}},
            [node("a", gpus=8), node("b", gpus=4)],
            3,  # 2 on a (6 of 8), 1 on b: GPUs are not shared across nodes
            id="whole-pods-per-node",
        ),
        pytest.param(
            {"replicas": 4, "resources": {"gpus": 1}},
            [node("a", gpus=8)],
            4,
            id="everything-fits",
        ),
        pytest.param(
            {
                "replicas": 8,
                "minReplicas": 1,
                "maxReplicas": 8,
                "resources": {"gpus": 1},
                "scheduling": {"nodeSelector": {"pool": "h100"}},
            },
            [
                node("a", gpus=8, labels={"pool": "a100"}),
                node("b", gpus=2, labels={"pool": "h100"}),
            ],
            2,
            id="only-nodes-the-pods-may-use",
        ),
    ],
)
def test_a_new_job_creates_only_what_the_nodes_can_place(
    job: dict[str, Any], nodes: list[Any], created: int
) -> None:
    the_spec = spec(**job)
    plan = compute_plan(observed([], the_spec=the_spec, nodes=nodes), NOW, CFG)
    assert workers_created(plan) == created
    assert plan.held_for_capacity == the_spec.replicas - created
    if plan.held_for_capacity:
        status, reason, message = pods_scheduled(plan)
        assert (status, reason) == ("False", "InsufficientCapacity")
        assert f"{created} of {the_spec.replicas} worker(s) created" in message
        assert f"room for {created} worker(s)" in message
        assert f"{the_spec.replicas - created} more are created as capacity appears" in message


def test_an_elastic_job_grows_when_a_node_comes() -> None:
    the_spec = spec(replicas=8, minReplicas=2, maxReplicas=8, resources={"gpus": 2})
    pods = [worker(i) for i in range(4)] + [store()]
    status = {"phase": "Running", "appliedSpec": the_spec.worker_fingerprint()}
    one = compute_plan(observed(pods, the_spec=the_spec, status=status, nodes=[node()]), NOW, CFG)
    assert workers_created(one) == 0
    assert one.held_for_capacity == 4
    two = compute_plan(
        observed(pods, the_spec=the_spec, status=status, nodes=[node(), node("b", gpus=4)]),
        NOW,
        CFG,
    )
    assert workers_created(two) == 2
    assert two.held_for_capacity == 2


def test_fewer_places_than_min_replicas_holds_the_job_before_anything_is_created() -> None:
    the_spec = spec(replicas=8, minReplicas=8, maxReplicas=8, resources={"gpus": 4})
    plan = compute_plan(observed([], the_spec=the_spec, nodes=[node("a", gpus=8)]), NOW, CFG)
    assert plan.creates == ()
    assert plan.status.reason == REASON_NO_CAPACITY
    assert "spec.minReplicas=8" in (plan.status.message or "")
    assert "room for 2" in (plan.status.message or "")


@pytest.mark.parametrize(
    ("config", "nodes"),
    [
        pytest.param(OperatorConfig(capacity_check=False), [node("a", gpus=1)], id="check-off"),
        pytest.param(CFG, None, id="nodes-not-observable"),
    ],
)
def test_without_the_check_every_worker_is_created(config: OperatorConfig, nodes: Any) -> None:
    the_spec = spec(replicas=16, minReplicas=1, maxReplicas=16, resources={"gpus": 1})
    plan = compute_plan(observed([], the_spec=the_spec, nodes=nodes), NOW, config)
    assert workers_created(plan) == 16
    assert plan.held_for_capacity == 0

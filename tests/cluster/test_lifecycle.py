"""Failure lifecycle against the real control plane: evictions, hand deletions, the
deadline of a job that never starts, a pod's own deadline, in-place restarts spending the
one budget, and the capacity check that honours the pods' nodeSelector."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.cluster.conftest import Cluster, Operator, localcluster, wait_for, wait_until
from tests.cluster.test_operator import status, tj, until_phase, until_running, workers
from tests.exporter.helpers import Exposition

pytestmark = pytest.mark.cluster
HOLD = "trainop.dev/test-hold"


def uid(pod: dict[str, Any]) -> str:
    return str(pod["metadata"]["uid"])


def warnings(c: Cluster, ns: str, name: str, reason: str) -> list[str]:
    return [
        e["message"]
        for e in c.events(ns, name)
        if e.get("type") == "Warning" and e.get("reason") == reason
    ]


def report_progress(c: Cluster, ns: str, pod: str, **report: Any) -> None:
    """What the metrics sidecar does with the trainer's progress.json."""
    c.kubectl(
        "annotate",
        "pod",
        pod,
        "-n",
        ns,
        "--overwrite",
        f"trainop.dev/progress={json.dumps(report)}",
    )


def test_pod_evicted_through_the_eviction_api_is_recorded_and_replaced_for_free(
    operator: Operator, ns: str
) -> None:
    c = operator.cluster
    c.apply(tj("evict"), ns)
    victim = until_running(c, ns, "evict", 2)[0]
    name = victim["metadata"]["name"]
    # A real kubelet takes the grace period to stop the victim; kwok removes it at once.
    # A finalizer holds it Terminating, as a kubelet would, so the operator sees it then.
    c.kubectl(
        "patch",
        "pod",
        name,
        "-n",
        ns,
        "--type=merge",
        "-p",
        json.dumps({"metadata": {"finalizers": [HOLD]}}),
    )
    eviction = {
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": name, "namespace": ns},
    }
    c.kubectl(
        "create",
        "--raw",
        f"/api/v1/namespaces/{ns}/pods/{name}/eviction",
        "-f",
        "-",
        input=json.dumps(eviction),
    )
    held = c.get("pod", name, ns)
    reasons = {cd["type"]: cd.get("reason") for cd in held["status"].get("conditions", [])}
    assert reasons.get("DisruptionTarget") == "EvictionByEvictionAPI"

    st = wait_until(
        "the eviction in status",
        lambda: status(c, ns, "evict"),
        lambda s: (s.get("lastFailure") or {}).get("podUID") == uid(victim),
    )
    lf = st["lastFailure"]
    assert (lf["reason"], lf["action"], lf["counted"]) == ("Evicted", "Ignore", False)
    assert st["restarts"] == 0
    assert wait_for("a WorkerFailed event", lambda: warnings(c, ns, "evict", "WorkerFailed"))

    c.kubectl(
        "patch",
        "pod",
        name,
        "-n",
        ns,
        "--type=json",
        "-p",
        '[{"op": "remove", "path": "/metadata/finalizers"}]',
    )
    pods = wait_for(
        "a replacement with a new uid",
        lambda: [
            p
            for p in workers(c, ns, "evict")
            if p["metadata"]["name"] == name and uid(p) != uid(victim)
        ],
    )
    assert pods
    until_running(c, ns, "evict", 2)
    st = status(c, ns, "evict")
    assert st["restarts"] == 0  # recorded once: not again as a hand deletion
    assert st["lastFailure"]["reason"] == "Evicted"


def test_worker_deleted_by_hand_is_recorded_and_replaced(operator: Operator, ns: str) -> None:
    c = operator.cluster
    c.apply(tj("byhand"), ns)
    victim = until_running(c, ns, "byhand", 2)[1]
    # Seen alive in status before it goes, so its disappearance is noticed.
    wait_until(
        "both workers followed",
        lambda: status(c, ns, "byhand"),
        lambda s: len(s.get("liveWorkers") or []) == 2,
    )
    c.kubectl("delete", "pod", victim["metadata"]["name"], "-n", ns, "--wait=false")
    st = wait_until(
        "the deletion in status",
        lambda: status(c, ns, "byhand"),
        lambda s: (s.get("lastFailure") or {}).get("podUID") == uid(victim),
    )
    assert (st["lastFailure"]["reason"], st["lastFailure"]["counted"]) == ("Deleted", False)
    assert wait_for("a WorkerFailed event", lambda: warnings(c, ns, "byhand", "WorkerFailed"))
    pods = until_running(c, ns, "byhand", 2)
    assert uid(victim) not in {uid(p) for p in pods}


def test_deadline_fails_a_job_that_never_gets_scheduled(operator: Operator, ns: str) -> None:
    c = operator.cluster
    # More CPU than any node has: the pods are created (the GPU capacity check passes) and
    # stay Unschedulable. A nodeSelector no node matches would stop them before creation.
    body = tj("nowhere", runPolicy={"activeDeadlineSeconds": 5}, resources={"gpus": 1, "cpu": 1000})
    c.apply(body, ns)
    pending = wait_for(
        "unschedulable workers",
        lambda: [
            p
            for p in workers(c, ns, "nowhere")
            if any(
                cd.get("type") == "PodScheduled" and cd.get("status") == "False"
                for cd in p["status"].get("conditions", [])
            )
        ],
    )
    assert pending
    st = until_phase(c, ns, "nowhere", "Failed", timeout=30)
    assert st["reason"] == "DeadlineExceeded"
    assert "admissionTime" in st
    assert "startTime" not in st  # it never ran
    # No pod is left holding (or waiting for) a GPU.
    wait_until("no live worker", lambda: workers(c, ns, "nowhere"), lambda pods: pods == [])


def in_place_counted(operator: Operator) -> float:
    value = Exposition(operator.metrics()).value(
        "trainop_operator_restarts_total", reason="InPlace", counted="true"
    )
    return value or 0.0


def test_in_place_restarts_reported_by_pods_spend_the_budget(operator: Operator, ns: str) -> None:
    c = operator.cluster
    counted_before = in_place_counted(operator)
    c.apply(tj("inplace", failurePolicy={"backoffLimit": 2, "backoffSeconds": 0}), ns)
    first, second = until_running(c, ns, "inplace", 2)
    report_progress(c, ns, first["metadata"]["name"], step=7, restarts=1, time=1_795_000_000)
    st = wait_until(
        "one in-place restart counted",
        lambda: status(c, ns, "inplace"),
        lambda s: s.get("inPlaceRestarts") == 1,
    )
    assert (st["restarts"], st["restartsSummary"], st["phase"]) == (1, "1/2", "Running")
    row = c.kubectl("get", "tj", "inplace", "-n", ns, "--no-headers")
    assert "1/2" in row

    report_progress(c, ns, second["metadata"]["name"], step=8, restarts=2, time=1_795_000_001)
    st = until_phase(c, ns, "inplace", "Failed")
    assert st["reason"] == "BackoffLimitExceeded"
    assert (st["restarts"], st["inPlaceRestarts"]) == (3, 3)
    assert st["restartsByReason"]["InPlace"] == 3
    assert warnings(c, ns, "inplace", "InPlaceRestart")
    assert in_place_counted(operator) - counted_before == 3
    wait_until("no live worker", lambda: workers(c, ns, "inplace"), lambda pods: pods == [])


def test_a_pod_stopped_by_its_own_deadline_is_its_own_failure_class(
    operator: Operator, ns: str
) -> None:
    c = operator.cluster
    rule = {"action": "FailJob", "reasons": ["DeadlineExceeded"]}
    c.apply(tj("poddeadline", failurePolicy={"rules": [rule]}), ns)
    victim = until_running(c, ns, "poddeadline", 2)[0]
    # What the kubelet writes when the pod outlives spec.activeDeadlineSeconds.
    kubelet = "Pod was active on the node longer than the specified deadline"
    ended = {"status": {"phase": "Failed", "reason": "DeadlineExceeded", "message": kubelet}}
    c.kubectl(
        "patch",
        "pod",
        victim["metadata"]["name"],
        "-n",
        ns,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(ended),
    )
    st = until_phase(c, ns, "poddeadline", "Failed")
    assert st["reason"] == "FailedByRule"
    lf = st["lastFailure"]
    assert (lf["podUID"], lf["reason"], lf["message"]) == (uid(victim), "DeadlineExceeded", kubelet)
    wait_until("no live worker", lambda: workers(c, ns, "poddeadline"), lambda pods: pods == [])


def test_capacity_counts_only_the_nodes_the_selector_allows(operator: Operator, ns: str) -> None:
    c = operator.cluster
    # gpu-node-0 and gpu-node-1 offer 8 GPUs, but the selector allows only gpu-node-2 (4).
    body = tj(
        "placed",
        replicas=1,
        minReplicas=1,
        maxReplicas=1,
        resources={"gpus": 8},
        scheduling={"nodeSelector": {"kubernetes.io/hostname": "gpu-node-2"}},
    )
    c.apply(body, ns)
    st = wait_until(
        "InsufficientGPUCapacity",
        lambda: status(c, ns, "placed"),
        lambda s: s.get("reason") == "InsufficientGPUCapacity",
    )
    cond = next(x for x in st["conditions"] if x["type"] == "SpecValid")
    assert cond["status"] == "False"
    assert "2 ready node(s) offer that many nvidia.com/gpu" in cond["message"]
    assert "the largest node the pods may use offers 4 nvidia.com/gpu" in cond["message"]
    assert wait_for(
        "a Warning Event naming the selector",
        lambda: [m for m in warnings(c, ns, "placed", "JobPending") if "nodeSelector" in m],
    )
    assert c.list("pods", ns, "trainop.dev/job-name=placed") == []

    body["spec"]["scheduling"] = {"nodeSelector": {"kubernetes.io/hostname": "gpu-node-0"}}
    c.apply(body, ns)
    (pod,) = until_running(c, ns, "placed", 1)
    assert pod["spec"]["nodeName"] == "gpu-node-0"
    st = status(c, ns, "placed")
    assert next(x for x in st["conditions"] if x["type"] == "SpecValid")["status"] == "True"


def test_a_job_held_for_capacity_starts_as_soon_as_a_big_enough_node_joins(
    operator: Operator, ns: str
) -> None:
    c = operator.cluster
    c.apply(tj("big", replicas=1, minReplicas=1, maxReplicas=1, resources={"gpus": 16}), ns)
    wait_until(
        "InsufficientGPUCapacity",
        lambda: status(c, ns, "big"),
        lambda s: s.get("reason") == "InsufficientGPUCapacity",
    )
    name = f"gpu16-{ns}"
    c.apply(localcluster.gpu_node(name, 16))
    try:
        # Woken by the node's arrival, not by the resync (every 300 s).
        (pod,) = until_running(c, ns, "big", 1, timeout=20)
        assert pod["spec"]["nodeName"] == name
    finally:
        c.kubectl("delete", "node", name, "--wait=false", check=False)


def test_1024_replicas_on_20_gpus_create_what_fits_and_grow_with_a_new_node(
    operator: Operator, ns: str
) -> None:
    """Once 1024 pods in 18 s (load average 12.7) with conditions that miscounted."""
    c = operator.cluster
    room = sum(localcluster.GPU_NODES.values())
    spec = {"replicas": 1024, "minReplicas": 1, "maxReplicas": 1024, "resources": {"gpus": 1}}
    c.apply(tj("huge", **spec), ns)
    wait_for("workers created", lambda: len(workers(c, ns, "huge")) >= room)
    st = wait_until(
        "InsufficientCapacity",
        lambda: status(c, ns, "huge"),
        lambda s: any(x["reason"] == "InsufficientCapacity" for x in s.get("conditions", [])),
    )
    cond = next(x for x in st["conditions"] if x["type"] == "PodsScheduled")
    assert cond["message"].startswith(f"{room} of 1024 worker(s) created")
    assert f"{1024 - room} more are created as capacity appears" in cond["message"]
    time.sleep(3)  # woken by its own pods meanwhile: still no more than fit
    assert len(workers(c, ns, "huge")) == room
    name = f"gpu8-{ns}"
    c.apply(localcluster.gpu_node(name, 8))
    try:
        # Woken by the node's arrival, not by the resync (every 300 s).
        wait_for("8 more workers", lambda: len(workers(c, ns, "huge")) == room + 8, timeout=20)
    finally:
        c.kubectl("delete", "node", name, "--wait=false", check=False)
    c.kubectl("delete", "trainingjob", "huge", "-n", ns, "--wait=false")

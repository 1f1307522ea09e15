"""TrainingJobs queued in real Kueue (tests/cluster/kueue.py) on the real control plane.

One ClusterQueue of 8 nvidia.com/gpu per test, jobs of 4 GPUs each on the kwok GPU
nodes (20 GPUs in all: the quota, not the nodes, is what runs out). What the API server
holds is asserted: the jobs' status and conditions, their pods, and Kueue's Workloads.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.cluster import kueue as kq
from tests.cluster.conftest import Cluster, Operator, localcluster, wait_for, wait_until
from tests.cluster.test_operator import end_pod, status, tj, until_running, workers

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
# Timings, shown with -o log_cli=true --log-cli-level=INFO.
log = logging.getLogger("tests.kueue")
GPU_PRODUCT = "NVIDIA-H100-80GB-HBM3"  # every kwok GPU node has it (hack/localcluster.py)


@pytest.fixture(scope="module")
def kueue(operator: Operator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[kq.Kueue]:
    c = operator.cluster
    handle = kq.start(
        c, tmp_path_factory.mktemp("kueue"), localcluster.free_port, localcluster.cache_dir()
    )
    # A fresh operator finds Kueue's API at once (no remembered "not served").
    operator.start()
    log.info("kueue ready in %.1fs", handle.started_seconds)
    yield handle
    kq.stop(c, handle)
    operator.start()  # nor a remembered "served" for the tests after this module


def apply_cluster_queue(c: Cluster, ns: str, gpus: int = 8) -> str:
    """A ClusterQueue of `gpus` GPUs on the kwok H100 nodes (kq.apply_queue). Returns the
    flavor name."""
    quota = {"cpu": "1000", "memory": "10Ti", "nvidia.com/gpu": str(gpus)}
    return kq.apply_queue(c, ns, quota, {"nvidia.com/gpu.product": GPU_PRODUCT}, flavor="h100")


def queued(name: str, replicas: int = 2, gpus: int = 2, **spec: Any) -> dict[str, Any]:
    """A job of replicas x gpus GPUs in the LocalQueue research (fixed size unless
    minReplicas is given)."""
    body = tj(name, replicas=replicas, resources={"gpus": gpus}, **spec)
    for key in ("minReplicas", "maxReplicas"):
        if key not in spec:
            body["spec"].pop(key)
    body["metadata"]["labels"] = {"kueue.x-k8s.io/queue-name": "research"}
    return body


def cond(st: dict[str, Any], type_: str = "QueueAdmitted") -> dict[str, Any]:
    return next((x for x in st.get("conditions", []) if x["type"] == type_), {})


WORKLOADS = "workloads.kueue.x-k8s.io"


def workload(c: Cluster, ns: str, job: str) -> dict[str, Any]:
    (wl,) = c.list(WORKLOADS, ns, f"trainop.dev/job-name={job}")
    return wl


def wl_cond(wl: dict[str, Any], type_: str) -> str | None:
    found = next((x for x in wl["status"].get("conditions", []) if x["type"] == type_), None)
    return found["status"] if found else None


def running_jobs(c: Cluster, ns: str, names: list[str]) -> list[str]:
    return [n for n in names if status(c, ns, n).get("phase") == "Running"]


def test_quota_runs_two_of_three_and_the_third_when_one_finishes(
    kueue: kq.Kueue, operator: Operator, ns: str
) -> None:
    c = operator.cluster
    flavor = apply_cluster_queue(c, ns)
    names = ["q-a", "q-b", "q-c"]
    t0 = time.monotonic()
    for name in names:
        c.apply(queued(name), ns)
        time.sleep(0.3)  # Kueue's queue is ordered by creation time
    wait_for("two jobs running", lambda: len(running_jobs(c, ns, names)) == 2, timeout=90)
    ran = running_jobs(c, ns, names)
    (waiting,) = set(names) - set(ran)
    log.info("two of three running %.1fs after apply", time.monotonic() - t0)
    st = wait_until(
        f"{waiting} queued with Kueue's reason",
        lambda: status(c, ns, waiting),
        lambda s: "insufficient unused quota" in s.get("message", ""),
        timeout=60,
    )
    assert (st["phase"], st["reason"]) == ("Suspended", "QueuedInKueue")
    assert (cond(st)["status"], cond(st)["reason"]) == ("False", "QueuedInKueue")
    assert "nvidia.com/gpu" in cond(st)["message"]
    assert not workers(c, ns, waiting)
    assert "QueuedInKueue" in c.kubectl("get", "tj", waiting, "-n", ns)
    # The admitted jobs run on the admitted flavor, as many workers as admitted.
    for name in ran:
        assert cond(status(c, ns, name))["reason"] == "Admitted"
        # Kueue's waitForPodsReady is on (tests/cluster/kueue.py): told, it evicts nothing.
        wait_until(
            f"{name}'s Workload PodsReady",
            lambda name=name: workload(c, ns, name),
            lambda wl: wl_cond(wl, "PodsReady") == "True",
        )
        for pod in workers(c, ns, name):
            assert pod["spec"]["nodeSelector"]["nvidia.com/gpu.product"] == GPU_PRODUCT
        assert workload(c, ns, name)["status"]["admission"]["podSetAssignments"][0]["flavors"] == {
            "cpu": flavor,
            "memory": flavor,
            "nvidia.com/gpu": flavor,
        }
    # One finishes: its Workload finishes, the quota frees, the third starts.
    done = ran[0]
    t1 = time.monotonic()
    end_pod(c, ns, f"{done}-worker-0", 0)
    wait_until(
        f"{done} Succeeded", lambda: status(c, ns, done), lambda s: s.get("phase") == "Succeeded"
    )
    wait_until(
        f"{done}'s Workload finished",
        lambda: workload(c, ns, done),
        lambda wl: wl_cond(wl, "Finished") == "True",
    )
    until_running(c, ns, waiting, 2, timeout=60)
    log.info("third job running %.1fs after the first one finished", time.monotonic() - t1)
    assert cond(status(c, ns, waiting))["reason"] == "Admitted"


def test_a_higher_priority_job_preempts_and_the_preempted_one_resumes(
    kueue: kq.Kueue, operator: Operator, ns: str
) -> None:
    c = operator.cluster
    apply_cluster_queue(c, ns)
    low, high = f"{ns}-low", f"{ns}-high"
    for name, value in ((low, 100), (high, 1000)):
        c.apply(
            {
                "apiVersion": "scheduling.k8s.io/v1",
                "kind": "PriorityClass",
                "metadata": {"name": name},
                "value": value,
            }
        )
    try:
        for name in ("p-a", "p-b"):
            c.apply(queued(name, scheduling={"priorityClassName": low}), ns)
        for name in ("p-a", "p-b"):
            until_running(c, ns, name, 2, timeout=90)
        assert workload(c, ns, "p-a")["spec"]["priority"] == 100
        t0 = time.monotonic()
        c.apply(queued("p-high", scheduling={"priorityClassName": high}), ns)
        first = wait_for(
            "p-high's Workload", lambda: c.list(WORKLOADS, ns, "trainop.dev/job-name=p-high")
        )
        until_running(c, ns, "p-high", 2, timeout=90)
        # The same Workload all along: never replaced while it waited for the preemption.
        assert workload(c, ns, "p-high")["metadata"]["uid"] == first[0]["metadata"]["uid"]
        assert workload(c, ns, "p-high")["spec"]["priority"] == 1000
        took = time.monotonic() - t0
        (victim,) = [n for n in ("p-a", "p-b") if not workers(c, ns, n)]
        st = status(c, ns, victim)
        log.info("preempted %s; the high-priority job ran %.1fs after apply", victim, took)
        assert st["phase"] == "Suspended"
        assert st["reason"] == "EvictedByKueue"
        assert "Preempted" in st["message"]
        assert st["restarts"] == 0  # an eviction is not counted against the budget
        wl = workload(c, ns, victim)
        assert wl_cond(wl, "Evicted") == "True"
        assert wl_cond(wl, "Requeued") == "True"
        assert "admission" not in wl["status"]  # quota given back
        # The high-priority job ends: the preempted one is admitted again and resumes.
        c.kubectl("delete", "trainingjob", "p-high", "-n", ns, "--wait=true")
        until_running(c, ns, victim, 2, timeout=90)
        st = status(c, ns, victim)
        assert cond(st)["reason"] == "Admitted"
        assert st["restarts"] == 0
    finally:
        c.kubectl("delete", "priorityclass", low, high, "--ignore-not-found", check=False)


def test_suspending_a_queued_job_gives_its_quota_to_the_next(
    kueue: kq.Kueue, operator: Operator, ns: str
) -> None:
    c = operator.cluster
    apply_cluster_queue(c, ns)
    for name in ("s-a", "s-b"):
        c.apply(queued(name), ns)
        until_running(c, ns, name, 2, timeout=90)
    c.apply(queued("s-c"), ns)
    wait_until(
        "s-c queued",
        lambda: status(c, ns, "s-c"),
        lambda s: s.get("reason") == "QueuedInKueue",
    )
    c.kubectl(
        "patch", "trainingjob", "s-a", "-n", ns, "--type=merge", "-p", '{"spec":{"suspend":true}}'
    )
    until_running(c, ns, "s-c", 2, timeout=90)
    wl = workload(c, ns, "s-a")
    assert wl["spec"]["active"] is False
    assert "admission" not in wl["status"]
    assert status(c, ns, "s-a")["reason"] == "Suspended"
    # Resumed, it queues again behind what now holds the quota.
    c.kubectl(
        "patch", "trainingjob", "s-a", "-n", ns, "--type=merge", "-p", '{"spec":{"suspend":false}}'
    )
    st = wait_until(
        "s-a queued again",
        lambda: status(c, ns, "s-a"),
        lambda s: s.get("reason") in ("QueuedInKueue", "EvictedByKueue"),
    )
    assert workload(c, ns, "s-a")["spec"]["active"] is True
    assert not workers(c, ns, "s-a"), st


def test_partial_admission_starts_an_elastic_job_below_replicas(
    kueue: kq.Kueue, operator: Operator, ns: str
) -> None:
    c = operator.cluster
    apply_cluster_queue(c, ns)
    # 3 workers of 4 GPUs want 12; the queue has 8: Kueue admits 2 (>= minReplicas 1).
    c.apply(queued("elastic", replicas=3, gpus=4, minReplicas=1, maxReplicas=3), ns)
    pods = until_running(c, ns, "elastic", 2, timeout=90)
    wl = workload(c, ns, "elastic")
    workers_set = wl["spec"]["podSets"][0]
    assert (workers_set["count"], workers_set["minCount"]) == (3, 1)
    assert wl["status"]["admission"]["podSetAssignments"][0]["count"] == 2
    st = wait_until(
        "elastic Running", lambda: status(c, ns, "elastic"), lambda s: s.get("phase") == "Running"
    )
    assert st["workers"] == "2/2"
    assert "2 of 3 worker(s)" in cond(st)["message"]
    trainer = pods[0]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in trainer["env"]}
    assert env["PET_NNODES"] == "1:3"
    time.sleep(3)  # nothing more is created beyond the admission
    assert len(workers(c, ns, "elastic")) == 2


def test_no_workload_left_behind_when_the_job_is_deleted(
    kueue: kq.Kueue, operator: Operator, ns: str
) -> None:
    c = operator.cluster
    apply_cluster_queue(c, ns)
    c.apply(queued("gone"), ns)
    until_running(c, ns, "gone", 2, timeout=90)
    c.kubectl("delete", "trainingjob", "gone", "-n", ns, "--wait=true")
    wait_for(
        "Workload garbage-collected",
        lambda: not c.list(WORKLOADS, ns),
        timeout=60,
    )

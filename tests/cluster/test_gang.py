"""Gang scheduling on the real control plane: PodGroups against the real CRD schemas
(Volcano's and scheduler-plugins'), and a real gang scheduler (scheduler-plugins'
Coscheduling) holding a gang that cannot fit (tests/cluster/gang.py)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.cluster import gang as g
from tests.cluster.conftest import Operator, localcluster, wait_for, wait_until
from tests.cluster.test_operator import status, tj, until_running, workers
from tests.procs import stop_group
from trainop.api import constants as c
from trainop.api.spec import TrainingJobSpec
from trainop.core import gang
from trainop.core.build import JobRef

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
RESOURCE = {
    c.VOLCANO_API_VERSION: "podgroups.scheduling.volcano.sh",
    c.COSCHEDULING_API_VERSION: "podgroups.scheduling.x-k8s.io",
}


def gang_job(name: str, api: str, scheduler: str, replicas: int, gpus: int) -> dict[str, Any]:
    body = tj(
        name,
        replicas=replicas,
        resources={"gpus": gpus},
        scheduling={"schedulerName": scheduler, "gang": {"podGroupAPIVersion": api}},
    )
    for key in ("minReplicas", "maxReplicas"):  # a fixed-size gang: every replica
        body["spec"].pop(key)
    return body


def gang_cond(st: dict[str, Any]) -> dict[str, Any]:
    return next((x for x in st.get("conditions", []) if x["type"] == "GangScheduled"), {})


@pytest.fixture(scope="module")
def pod_group_crds(operator: Operator) -> Iterator[None]:
    c_ = operator.cluster
    cache = localcluster.cache_dir()
    for crd in (g.coscheduling_crd(), g.volcano_crd(cache)):
        c_.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(crd))
    for name in g.PODGROUP_CRDS:
        c_.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")
    operator.start()  # no remembered "not served"
    yield
    c_.kubectl("delete", "crd", *g.PODGROUP_CRDS, "--ignore-not-found", check=False)
    operator.start()


@pytest.fixture(scope="module")
def gang_scheduler(
    pod_group_crds: None, operator: Operator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    proc = g.start_scheduler(
        operator.cluster,
        tmp_path_factory.mktemp("gang-scheduler"),
        localcluster.cache_dir(),
        localcluster.free_port(),
    )
    time.sleep(3)  # its informers sync; a pod created before waits in its queue anyway
    assert proc.poll() is None, "the gang scheduler exited"
    # trainop's own capacity check would hold a gang the nodes cannot place before any
    # pod exists; off, as where GPU pools autoscale, the gang scheduler is what holds it.
    operator.start(TRAINOP_CAPACITY_CHECK="false")
    yield
    stop_group(proc, grace=10)
    operator.start()


def test_without_a_pod_group_api_a_gang_job_waits_and_says_so(operator: Operator, ns: str) -> None:
    c_ = operator.cluster
    if c_.get_or_none("crd", g.PODGROUP_CRDS[0], ""):
        pytest.skip("a PodGroup CRD is installed in this cluster")
    c_.apply(gang_job("nogang", "Auto", g.GANG_SCHEDULER, 2, 1), ns)
    st = wait_until(
        "nogang held",
        lambda: status(c_, ns, "nogang"),
        lambda s: s.get("reason") == "PodGroupAPINotInstalled",
        timeout=60,
    )
    assert st["phase"] == "Pending"
    assert (gang_cond(st)["status"], gang_cond(st)["reason"]) == (
        "False",
        "PodGroupAPINotInstalled",
    )
    assert not c_.list("pods", ns, "trainop.dev/job-name=nogang")


@pytest.mark.parametrize(
    ("api", "scheduler"),
    [
        pytest.param(c.VOLCANO_API_VERSION, "volcano", id="volcano"),
        pytest.param(c.COSCHEDULING_API_VERSION, g.GANG_SCHEDULER, id="coscheduling"),
    ],
)
def test_the_real_crd_accepts_the_pod_group_as_built(
    pod_group_crds: None, operator: Operator, ns: str, api: str, scheduler: str
) -> None:
    c_ = operator.cluster
    body = gang_job("pg", api, scheduler, 3, 1)
    body["spec"]["minReplicas"] = 2
    body["spec"]["scheduling"]["gang"].update(
        {"queue": "research"} if api == c.VOLCANO_API_VERSION else {"scheduleTimeoutSeconds": 30}
    )
    c_.apply(body, ns)
    stored = wait_for("the PodGroup", lambda: c_.get_or_none(RESOURCE[api], "pg", ns), 30)
    job = c_.get("trainingjob", "pg", ns)
    ref = JobRef("pg", ns, job["metadata"]["uid"], {})
    built = gang.build_pod_group(ref, TrainingJobSpec.model_validate(job["spec"]), api)
    # Stored as built: the real schema kept every field (nothing pruned) and refused none.
    assert stored["spec"] == {**stored["spec"], **built["spec"]}
    assert stored["spec"]["minMember"] == 2
    assert stored["metadata"]["ownerReferences"][0]["uid"] == ref.uid
    pods = wait_for("3 workers", lambda: len(workers(c_, ns, "pg")) == 3 and workers(c_, ns, "pg"))
    for pod in pods:
        if api == c.VOLCANO_API_VERSION:
            assert pod["metadata"]["annotations"]["scheduling.k8s.io/group-name"] == "pg"
        else:
            assert pod["metadata"]["labels"]["scheduling.x-k8s.io/pod-group"] == "pg"
        assert pod["spec"]["schedulerName"] == scheduler
    store = c_.get("pod", "pg-rdzv", ns)
    assert "scheduling.x-k8s.io/pod-group" not in store["metadata"].get("labels", {})
    if api == c.VOLCANO_API_VERSION:  # no Volcano scheduler runs here: the gang waits, named
        st = wait_until(
            "GangScheduled",
            lambda: status(c_, ns, "pg"),
            lambda s: gang_cond(s).get("reason") == "WaitingForGangScheduler",
        )
        assert "volcano starts at least 2 together" in gang_cond(st)["message"]


def test_a_gang_that_cannot_fit_holds_no_pod_running(
    gang_scheduler: None, operator: Operator, ns: str
) -> None:
    """Three workers of 8 GPUs: the kwok nodes have 8, 8 and 4, so two could run alone;
    the coscheduling plugin binds none of them."""
    c_ = operator.cluster
    c_.apply(gang_job("big", c.COSCHEDULING_API_VERSION, g.GANG_SCHEDULER, 3, 8), ns)
    wait_for("3 workers created", lambda: len(workers(c_, ns, "big")) == 3)
    deadline = time.monotonic() + 25  # beyond permitWaitingTimeSeconds (10)
    while time.monotonic() < deadline:
        bound = [p for p in workers(c_, ns, "big") if p["spec"].get("nodeName")]
        assert not bound, f"a gang member was bound alone: {bound[0]['metadata']['name']}"
        time.sleep(1)
    # The gang scheduler did look at them (only a scheduler writes PodScheduled=False).
    said = [
        x.get("message", "")
        for p in workers(c_, ns, "big")
        for x in p["status"].get("conditions", [])
        if x["type"] == "PodScheduled" and x["status"] == "False"
    ]
    assert said, "no scheduler considered the gang's pods"
    st = status(c_, ns, "big")
    assert st["phase"] == "Pending"
    assert gang_cond(st)["reason"] == "WaitingForGangScheduler"
    assert f"{g.GANG_SCHEDULER} starts at least 3 together" in gang_cond(st)["message"]


def test_a_gang_that_fits_runs_together(gang_scheduler: None, operator: Operator, ns: str) -> None:
    c_ = operator.cluster
    c_.apply(gang_job("fits", c.COSCHEDULING_API_VERSION, g.GANG_SCHEDULER, 2, 8), ns)
    pods = until_running(c_, ns, "fits", 2, timeout=60)
    assert {p["spec"]["nodeName"] for p in pods} == {"gpu-node-0", "gpu-node-1"}
    st = wait_until(
        "GangScheduled",
        lambda: status(c_, ns, "fits"),
        lambda s: gang_cond(s).get("status") == "True",
    )
    assert gang_cond(st)["reason"] == "Scheduled"

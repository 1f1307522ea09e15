"""The local control plane is real: schema pruning, CEL, scheduling, kwok lifecycles."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.cluster.conftest import ROOT, Cluster, wait_for, wait_until

pytestmark = pytest.mark.cluster


def job(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "trainop.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {"image": "trainer:1", "entrypoint": {"module": "m"}, **spec},
    }


def gpu_pod(name: str, gpus: int, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations or {}},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "trainer",
                    "image": "trainer:1",
                    "resources": {"limits": {"nvidia.com/gpu": str(gpus)}},
                }
            ],
        },
    }


def test_api_server_prunes_unknown_fields_and_applies_defaults(crd: Cluster, ns: str) -> None:
    body = job("pruned")
    body["spec"]["notAField"] = "x"
    crd.kubectl("create", "-n", ns, "-f", "-", "--validate=false", input=json.dumps(body))
    stored = crd.get("trainingjob", "pruned", ns)["spec"]
    assert "notAField" not in stored
    assert stored["failurePolicy"]["backoffLimit"] == 6
    assert stored["runPolicy"]["cleanPodPolicy"] == "Running"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"replicas": 5, "maxReplicas": 4}, "spec.replicas must be <= spec.maxReplicas"),
        ({"replicas": 2, "minReplicas": 3}, "spec.minReplicas must be <= spec.replicas"),
        ({"entrypoint": {"module": "m", "script": "s.py"}}, "set exactly one of"),
        ({"entrypoint": {"command": ["--rdzv-endpoint=evil:1"]}}, "must not start with '-'"),
        ({"entrypoint": {"module": "x; rm -rf /"}}, "spec.entrypoint.module"),
    ],
)
def test_api_server_rejects_specs_that_break_cel_rules(
    crd: Cluster, ns: str, spec: dict[str, Any], message: str
) -> None:
    out = crd.kubectl(
        "apply", "-n", ns, "-f", "-", input=json.dumps(job("bad", **spec)), check=False
    )
    assert message in out
    assert crd.get_or_none("trainingjob", "bad", ns) is None


def test_gpu_pod_is_scheduled_onto_a_kwok_gpu_node_and_runs(cluster: Cluster, ns: str) -> None:
    cluster.apply(gpu_pod("gpu", 2), ns)
    pod = wait_until(
        "pod Running",
        lambda: cluster.get("pod", "gpu", ns),
        lambda p: p["status"].get("phase") == "Running",
    )
    assert pod["spec"]["nodeName"].startswith("gpu-node-")
    node = cluster.get("node", pod["spec"]["nodeName"], "")
    assert int(node["status"]["allocatable"]["nvidia.com/gpu"]) >= 2


@pytest.mark.parametrize(
    ("code", "reason", "phase"),
    [("137", "OOMKilled", "Failed"), ("3", "", "Failed"), ("0", "", "Succeeded")],
)
def test_kwok_stage_ends_a_running_pod_with_the_chosen_exit_code(
    cluster: Cluster, ns: str, code: str, reason: str, phase: str
) -> None:
    notes = {"kwok.trainop.dev/exit-code": code}
    if reason:
        notes["kwok.trainop.dev/reason"] = reason
    cluster.apply(gpu_pod("ends", 1, notes), ns)
    pod = wait_until(
        f"pod {phase}",
        lambda: cluster.get("pod", "ends", ns),
        lambda p: p["status"].get("phase") == phase,
    )
    term = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == int(code)
    assert term["reason"] == (reason or ("Completed" if code == "0" else "Error"))


def test_pod_asking_more_gpus_than_any_node_stays_pending_with_the_schedulers_reason(
    cluster: Cluster, ns: str
) -> None:
    cluster.apply(gpu_pod("huge", 16), ns)

    def unschedulable() -> dict[str, Any] | None:
        pod = cluster.get("pod", "huge", ns)
        conds = {c["type"]: c for c in pod["status"].get("conditions", [])}
        cond = conds.get("PodScheduled")
        return cond if cond and cond["status"] == "False" else None

    cond = wait_for("PodScheduled=False", unschedulable)
    assert cond["reason"] == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in cond["message"]
    assert cluster.get("pod", "huge", ns)["status"]["phase"] == "Pending"


def test_every_shipped_example_is_accepted_by_the_api_server(crd: Cluster, ns: str) -> None:
    out = crd.kubectl("apply", "--dry-run=server", "-n", ns, "-f", str(ROOT / "examples"))
    created = [line for line in out.splitlines() if "created (server dry run)" in line]
    assert len(created) == len(list((ROOT / "examples").glob("*.yaml")))

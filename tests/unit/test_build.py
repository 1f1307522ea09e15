"""Pure builders as tables: the metrics sidecar and the in-pod rendezvous settings."""

from __future__ import annotations

from typing import Any

import pytest

from tests.factories import JOB, spec
from trainop.api import constants as c
from trainop.api.spec import Rendezvous
from trainop.core.build import build_worker_pod
from trainop.core.config import OperatorConfig
from trainop_runtime import contract as rc

CFG = OperatorConfig(exporter_image="trainop:test")


def pod_spec(**overrides: Any) -> dict[str, Any]:
    return dict(build_worker_pod(JOB, spec(**overrides), 0, 0, CFG)["spec"])


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def fields_of(container: dict[str, Any]) -> dict[str, str]:
    """Env from the downward API: name -> the pod field it reads."""
    return {
        e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"]
        for e in container["env"]
        if "fieldRef" in e.get("valueFrom", {})
    }


@pytest.mark.parametrize(
    ("overrides", "image", "port"),
    [
        pytest.param({}, "trainop:test", 9400, id="defaults"),
        pytest.param(
            {"metrics": {"image": "mine:2", "port": 9500}, "resources": {"gpus": 8}},
            "mine:2",
            9500,
            id="own-image-and-port",
        ),
    ],
)
def test_metrics_sidecar_is_a_native_sidecar_that_sees_gpus_without_requesting_one(
    overrides: dict[str, Any], image: str, port: int
) -> None:
    ps = pod_spec(**overrides)
    (sidecar,) = ps["initContainers"]
    assert sidecar["name"] == c.EXPORTER_CONTAINER
    assert sidecar["image"] == image
    assert sidecar["restartPolicy"] == "Always"  # native sidecar: never blocks completion
    resources = sidecar["resources"]
    for part in ("requests", "limits"):
        assert not any("gpu" in name for name in resources.get(part, {})), resources
    env = env_of(sidecar)
    # Who and where it is, from the downward API: its labels on every series, and the
    # node on the GPU series.
    assert fields_of(sidecar) == {
        rc.ENV_JOB_NAME: f"metadata.labels['{c.LABEL_JOB}']",
        rc.ENV_JOB_NAMESPACE: "metadata.namespace",
        rc.ENV_POD_NAME: "metadata.name",
        rc.ENV_NODE_NAME: "spec.nodeName",
    }
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert env["NVIDIA_DRIVER_CAPABILITIES"] == "utility"
    assert sidecar["volumeMounts"] == [
        {"name": c.RUN_VOLUME, "mountPath": rc.DEFAULT_RUN_DIR, "readOnly": True}
    ]
    assert {"name": "metrics", "containerPort": port} in sidecar["ports"]
    # The trainer shares the run dir (writable) and is the one holding the GPUs.
    (trainer,) = ps["containers"]
    assert {"name": c.RUN_VOLUME, "mountPath": rc.DEFAULT_RUN_DIR} in trainer["volumeMounts"]
    gpus = spec(**overrides).resources.gpus
    assert trainer["resources"]["limits"]["nvidia.com/gpu"] == str(gpus)


def test_metrics_sidecar_is_absent_when_disabled() -> None:
    ps = pod_spec(metrics={"enabled": False})
    assert "initContainers" not in ps
    assert [ct["name"] for ct in ps["containers"]] == [c.TRAINER_CONTAINER]


@pytest.mark.parametrize(
    ("rendezvous", "join", "last_call"),
    [
        pytest.param(
            {}, rc.RDZV_JOIN_TIMEOUT_SECONDS, rc.RDZV_LAST_CALL_TIMEOUT_SECONDS, id="default"
        ),
        pytest.param({"joinTimeoutSeconds": 30, "lastCallTimeoutSeconds": 1}, 30, 1, id="per-job"),
    ],
)
def test_rendezvous_conf_uses_the_agreed_contract_values(
    rendezvous: dict[str, Any], join: int, last_call: int
) -> None:
    (trainer,) = pod_spec(rendezvous=rendezvous)["containers"]
    conf = dict(kv.split("=", 1) for kv in env_of(trainer)[rc.PET_RDZV_CONF].split(","))
    assert conf == {
        "is_host": "false",
        "join_timeout": str(join),
        "last_call_timeout": str(last_call),
        "keep_alive_interval": str(rc.RDZV_KEEP_ALIVE_INTERVAL_SECONDS),
        "keep_alive_max_attempt": str(rc.RDZV_KEEP_ALIVE_MAX_ATTEMPT),
    }


def test_spec_rendezvous_defaults_are_the_contract_defaults() -> None:
    # The CRD defaults equal the model's (test_api); this ties both to the runtime contract.
    defaults = Rendezvous()
    assert defaults.join_timeout_seconds == rc.RDZV_JOIN_TIMEOUT_SECONDS
    assert defaults.last_call_timeout_seconds == rc.RDZV_LAST_CALL_TIMEOUT_SECONDS


TRAINER = c.TRAINER_CONTAINER
# spec overrides -> the trainer's OMP_NUM_THREADS (None: not set, torch's own default)
THREADS: dict[str, tuple[dict[str, Any], str | None]] = {
    "no CPU figure: left to torch": ({}, None),
    "request 16 cores over 8 GPU processes": ({"resources": {"gpus": 8, "cpu": "16"}}, "2"),
    "millicores round down": ({"resources": {"gpus": 2, "cpu": "3500m"}}, "1"),
    "an integer request, one process": ({"resources": {"cpu": 6}}, "6"),
    "less than a core each is still 1": ({"resources": {"gpus": 4, "cpu": "500m"}}, "1"),
    "explicit nprocPerNode divides": ({"resources": {"cpu": "8"}, "nprocPerNode": 4}, "2"),
    "the limit beats the request": (
        {
            "resources": {"gpus": 2, "cpu": "4"},
            "podTemplate": {
                "spec": {"containers": [{"name": TRAINER, "resources": {"limits": {"cpu": "12"}}}]}
            },
        },
        "6",
    ),
    "a podTemplate request when spec.resources has none": (
        {
            "resources": {"gpus": 1},
            "podTemplate": {
                "spec": {"containers": [{"name": TRAINER, "resources": {"requests": {"cpu": "3"}}}]}
            },
        },
        "3",
    ),
    "the user's OMP_NUM_THREADS wins": (
        {"resources": {"cpu": "16"}, "env": [{"name": "OMP_NUM_THREADS", "value": "5"}]},
        "5",
    ),
    "the user's MKL_NUM_THREADS: no default added": (
        {"resources": {"cpu": "16"}, "env": [{"name": "MKL_NUM_THREADS", "value": "3"}]},
        None,
    ),
}


@pytest.mark.parametrize("case", THREADS, ids=list(THREADS))
def test_each_worker_process_gets_its_share_of_the_pods_cpu_as_threads(case: str) -> None:
    overrides, want = THREADS[case]
    (trainer,) = pod_spec(**overrides)["containers"]
    names = [e["name"] for e in trainer["env"]]
    assert env_of(trainer).get("OMP_NUM_THREADS") == want
    # One entry per name: the API server warns on duplicates and keeps only the last.
    assert names.count("OMP_NUM_THREADS") <= 1

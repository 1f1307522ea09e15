"""The metrics sidecar pushes progress onto its pod, as the pod's service account, through
the real API server and its RBAC; the operator then shows it in status (test_operator)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.conftest import Cluster, localcluster, wait_for

pytestmark = pytest.mark.cluster
PROGRESS = {
    "step": 42,
    "totalSteps": 100,
    "loss": 1.234567,
    "samples": 4200,
    "time": 1.7e9,
    "checkpointStep": 40,
    "checkpointTime": 1.7e9,
    "unknownKey": "dropped",
}


def _sidecar(cluster: Cluster, ns: str, pod: str, tmp: Path, token: str) -> subprocess.Popen[bytes]:
    server = yaml.safe_load(cluster.kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
    host, port = server.removeprefix("https://").rsplit(":", 1)
    sa_dir = tmp / "sa"
    sa_dir.mkdir()
    (sa_dir / "token").write_text(token)
    (sa_dir / "ca.crt").write_bytes((localcluster.cluster_dir() / "pki" / "ca.crt").read_bytes())
    run_dir = tmp / "run"
    run_dir.mkdir()
    (run_dir / "progress.json").write_text(json.dumps(PROGRESS))
    env = {
        **os.environ,
        "KUBERNETES_SERVICE_HOST": host,
        "KUBERNETES_SERVICE_PORT": port,
        "TRAINOP_SA_DIR": str(sa_dir),
        "TRAINOP_RUN_DIR": str(run_dir),
        "TRAINOP_JOB_NAMESPACE": ns,
        "TRAINOP_POD_NAME": pod,
        "TRAINOP_JOB_NAME": "j",
        "TRAINOP_EXPORTER_PROGRESS_SECONDS": "0.5",
    }
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "trainop.exporter",
            "--address",
            "127.0.0.1",
            "--port",
            str(localcluster.free_port()),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _pod(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "serviceAccountName": "worker",
            "containers": [{"name": "trainer", "image": "trainer:1"}],
        },
    }


@pytest.mark.parametrize("granted", [True, False], ids=["rbac-granted", "rbac-missing"])
def test_sidecar_patches_its_pod_with_progress_only_when_allowed(
    cluster: Cluster, ns: str, tmp_path: Path, granted: bool
) -> None:
    cluster.kubectl("create", "serviceaccount", "worker", "-n", ns)
    if granted:
        cluster.kubectl("create", "role", "progress", "-n", ns, "--verb=patch", "--resource=pods")
        cluster.kubectl(
            "create",
            "rolebinding",
            "progress",
            "-n",
            ns,
            "--role=progress",
            f"--serviceaccount={ns}:worker",
        )
    cluster.apply(_pod("w0"), ns)
    token = cluster.kubectl("create", "token", "worker", "-n", ns).strip()
    proc = _sidecar(cluster, ns, "w0", tmp_path, token)
    try:
        if granted:
            raw = wait_for(
                "progress annotation",
                lambda: (
                    cluster.get("pod", "w0", ns)["metadata"]
                    .get("annotations", {})
                    .get("trainop.dev/progress")
                ),
            )
            pushed = json.loads(raw)
            assert pushed["step"] == 42
            assert pushed["loss"] == 1.2346
            assert "unknownKey" not in pushed
        else:
            time.sleep(3)
            annotations = cluster.get("pod", "w0", ns)["metadata"].get("annotations") or {}
            assert "trainop.dev/progress" not in annotations
            assert proc.poll() is None  # still serving metrics
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0
    if not granted:
        log = out.decode()
        assert log.count("Grant the pod's service account `patch` on pods") == 1

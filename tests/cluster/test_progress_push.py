"""The metrics sidecar pushes progress onto its pod, as the pod's service account, through
the real API server and its RBAC; the operator then shows it in status (test_operator)."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.conftest import ROOT, Cluster, localcluster, wait_for, wait_until

pytestmark = pytest.mark.cluster
CHART = ROOT / "charts" / "trainop"
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
FAKE_GPU = "GPU-fa4e0000-0000-4000-8000-000000000000"  # the first of fake_nvml.demo's


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
    # The pod's one GPU, on a FakeNVML (a fake: no GPU here) whose counters run in real time.
    (run_dir / "gpus.json").write_text(json.dumps({"uuids": [FAKE_GPU]}))
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
            "--fake-nvml-gpus",
            "2",
            "--sample-every",
            "0.5",
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
            # The GPU usage so far rides along (status.usage sums it): one GPU held,
            # drawing the fake's 550 W, and later pushes carry larger totals.
            grown = wait_until(
                "a GPU-second of usage in the annotation",
                lambda: json.loads(
                    cluster.get("pod", "w0", ns)["metadata"]["annotations"]["trainop.dev/progress"]
                ),
                lambda pushed: pushed.get("gpuSeconds", 0) >= 1,
            )
            assert grown["idleGpuSeconds"] == 0  # the fake GPU is busy
            assert 400 * grown["gpuSeconds"] <= grown["energyJoules"] <= 700 * grown["gpuSeconds"]
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


def _patch_as(
    cluster: Cluster, token: str, ns: str, pod: str, change: dict[str, Any], *, dry_run: bool
) -> str:
    """PATCH a pod as the bearer of `token` alone, as the sidecar does (no GET first,
    which the reporter may not do); the API server's message, or "" when it took it."""
    query = "?dryRun=All" if dry_run else ""
    server = yaml.safe_load(cluster.kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
    ctx = ssl.create_default_context(cafile=str(localcluster.cluster_dir() / "pki" / "ca.crt"))
    req = urllib.request.Request(  # noqa: S310 - the local API server's https URL
        f"{server}/api/v1/namespaces/{ns}/pods/{pod}{query}",
        data=json.dumps(change).encode(),
        method="PATCH",
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/merge-patch+json",
        },
    )
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=30):  # noqa: S310
            return ""
    except urllib.error.HTTPError as err:
        return str(json.loads(err.read()).get("message", err.code))


def test_the_charts_policy_holds_a_reporter_to_its_own_pods_progress(
    cluster: Cluster, ns: str, tmp_path: Path
) -> None:
    """The chart's progressReporter objects (ClusterRole, RoleBinding, admission policy) as
    the real API server enforces them on a token bound to pod w0, as the kubelet mounts it."""
    release = f"pr-{ns}"  # the policy is cluster-wide: a name of this test's own
    values = [f"progressReporter.bindings[0].namespace={ns}"]
    values.append("progressReporter.bindings[0].serviceAccount=worker")
    only = ["--show-only", "templates/progress-reporter.yaml"]
    rendered = subprocess.run(
        [str(cluster.bins.helm / "helm"), "template", release, str(CHART), "-n", ns, *only]
        + [arg for v in values for arg in ("--set", v)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    cluster.kubectl("create", "serviceaccount", "worker", "-n", ns)
    cluster.kubectl("apply", "-f", "-", input=rendered)
    try:
        cluster.apply(_pod("w0"), ns)
        cluster.apply(_pod("w1"), ns)
        uid = cluster.get("pod", "w0", ns)["metadata"]["uid"]
        token = cluster.kubectl(
            "create", "token", "worker", "-n", ns, "--bound-object-kind=Pod",
            "--bound-object-name=w0", f"--bound-object-uid={uid}",
        ).strip()  # fmt: skip

        def refused(pod: str, change: dict[str, Any], dry_run: bool = False) -> str | None:
            return _patch_as(cluster, token, ns, pod, change, dry_run=dry_run) or None

        annotate = {"metadata": {"annotations": {"x": "1"}}}
        # The policy is loaded asynchronously: wait (by dry run, which admission sees
        # too, so nothing is changed meanwhile) until it refuses another pod.
        other = wait_for("the policy", lambda: refused("w1", annotate, dry_run=True), 30)
        assert "may update only its own pod" in other
        mine = refused("w0", annotate)
        assert mine is not None
        assert "only its pod's trainop.dev/progress annotation" in mine
        assert refused("w0", {"metadata": {"labels": {"app": "hijacked"}}}) is not None
        image = {"spec": {"containers": [{"name": "trainer", "image": "evil:1"}]}}
        assert refused("w0", image) is not None
        # What the sidecar does, through the real exporter process, still goes through.
        proc = _sidecar(cluster, ns, "w0", tmp_path, token)
        try:
            raw = wait_for(
                "progress annotation",
                lambda: (cluster.get("pod", "w0", ns)["metadata"].get("annotations") or {}).get(
                    "trainop.dev/progress"
                ),
            )
            assert json.loads(raw)["step"] == 42
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=20)
        annotations = cluster.get("pod", "w1", ns)["metadata"].get("annotations") or {}
        assert "x" not in annotations
    finally:
        cluster.kubectl("delete", "-f", "-", "--ignore-not-found", input=rendered, check=False)

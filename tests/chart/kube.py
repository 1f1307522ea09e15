"""The chart on the local control plane: install it, and run the real operator
under the chart's ServiceAccount with the chart's own arguments."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.chart.helpers import CHART, ROOT, Obj, helm_bin
from tests.cluster.conftest import Cluster, localcluster, wait_for
from tests.procs import stop_group

WORKERS = "trainop.dev/job-name={name},trainop.dev/role=worker"


@dataclass
class Release:
    cluster: Cluster
    name: str
    namespace: str
    values: tuple[str, ...]

    @property
    def fullname(self) -> str:
        return f"{self.name}-trainop"

    @property
    def sa(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.fullname}"

    def helm(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(helm_bin()), *args, "--namespace", self.namespace],
            capture_output=True,
            text=True,
            env=self.cluster.env,
            check=False,
            timeout=300,
        )

    def deployment(self) -> Obj:
        return self.cluster.get("deployment", self.fullname, self.namespace)

    def can_i(self, verb: str, resource: str, namespace: str | None = None) -> bool:
        """Whether the chart's ServiceAccount may: a SubjectAccessReview, so a resource
        whose CRD is not installed here (Kueue's, the PodGroups) is checked by its group
        too (kubectl auth can-i resolves names through discovery)."""
        # "pods/exec" is a subresource; "workloads.kueue.x-k8s.io" names its API group.
        resource, _, sub = resource.partition("/")
        name, _, group = resource.partition(".")
        attributes = {"verb": verb, "group": group, "resource": name}
        if sub:
            attributes["subresource"] = sub
        if namespace:
            attributes["namespace"] = namespace
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {"user": self.sa, "resourceAttributes": attributes},
        }
        out = self.cluster.kubectl("create", "-o", "json", "-f", "-", input=json.dumps(review))
        return bool(json.loads(out)["status"].get("allowed"))


def install(cluster: Cluster, *values: str) -> Release:
    name = f"op-{uuid.uuid4().hex[:6]}"
    namespace = f"{name}-system"
    cluster.kubectl("create", "namespace", namespace)
    release = Release(cluster, name, namespace, values)
    result = release.helm("install", name, str(CHART), *values)
    assert result.returncode == 0, result.stderr
    return release


@contextmanager
def bare_cluster(tmp: Path) -> Iterator[Cluster]:
    """A local control plane of its own (hack/localcluster.py in its own
    TRAINOP_CLUSTER_DIR), stopped on exit: one that has never seen the CRD, which
    the session's cluster got from the `crd` fixture before any helm install."""
    env = {**os.environ, "TRAINOP_CLUSTER_DIR": str(tmp / "cluster")}
    script = [sys.executable, str(ROOT / "hack" / "localcluster.py")]
    try:
        up = subprocess.run(
            [*script, "up"], env=env, capture_output=True, text=True, timeout=300, check=False
        )
        assert up.returncode == 0, up.stdout + up.stderr
        yield Cluster(tmp / "cluster" / "kubeconfig", localcluster.bins(build=False))
    finally:
        subprocess.run([*script, "down"], env=env, capture_output=True, timeout=60, check=False)


def uninstall(release: Release) -> None:
    release.helm("uninstall", release.name, "--wait")
    release.cluster.kubectl("delete", "namespace", release.namespace, "--wait=false", check=False)


def sa_kubeconfig(release: Release, path: Path) -> Path:
    """A kubeconfig that authenticates as the chart's ServiceAccount (a bound token)."""
    token = release.cluster.kubectl(
        "create", "token", release.fullname, "-n", release.namespace, "--duration=2h"
    ).strip()
    admin = json.loads(release.cluster.kubeconfig.read_text())
    cluster = admin["clusters"][0]
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [cluster],
                "users": [{"name": "sa", "user": {"token": token}}],
                "contexts": [{"name": "sa", "context": {"cluster": cluster["name"], "user": "sa"}}],
                "current-context": "sa",
            }
        )
    )
    return path


def chart_args(release: Release) -> list[str]:
    """The operator's arguments exactly as the installed Deployment passes them."""
    container = release.deployment()["spec"]["template"]["spec"]["containers"][0]
    return [str(a) for a in container["args"]]


@dataclass
class OperatorProcess:
    proc: subprocess.Popen[bytes]
    log: Path
    metrics_port: int
    health_port: int

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL, as when a node dies under the pod: no clean release of anything."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def healthz(self) -> tuple[int, str]:
        """The metrics port's /healthz, what the probes ask with leader election."""
        url = f"http://127.0.0.1:{self.metrics_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return resp.status, resp.read().decode().strip()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode().strip()

    def metrics(self) -> str:
        """The process's /metrics, once it serves them (it starts them first thing)."""

        def scrape() -> str | None:
            assert self.proc.poll() is None, self.text()[-3000:]
            url = f"http://127.0.0.1:{self.metrics_port}/metrics"
            try:
                with urllib.request.urlopen(url, timeout=5) as resp:
                    return str(resp.read().decode())
            except OSError:
                return None

        return wait_for("the operator's metrics", scrape, timeout=30)


@contextmanager
def operator_as_sa(release: Release, tmp: Path, *, tag: str = "op") -> Iterator[OperatorProcess]:
    """`trainop operator` with the chart's args, authenticated as the chart's SA."""
    kubeconfig = sa_kubeconfig(release, tmp / f"{tag}-kubeconfig")
    metrics, health = localcluster.free_port(), localcluster.free_port()
    args = [
        # Same endpoint path as in the pod, on a port free on this machine.
        f"--liveness=http://127.0.0.1:{health}/healthz" if a.startswith("--liveness=") else a
        for a in chart_args(release)
    ]
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "TRAINOP_METRICS_PORT": str(metrics),
        "TRAINOP_METRICS_ADDR": "127.0.0.1",
        "TRAINOP_EXPORTER_IMAGE": "trainop:test",
        # What the Deployment's downward API gives the pod.
        "POD_NAME": tag,
        "POD_NAMESPACE": release.namespace,
    }
    log = tmp / f"{tag}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "trainop.cli", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    op = OperatorProcess(proc, log, metrics, health)
    try:
        yield op
    finally:
        stop_group(proc, grace=20)


def training_job(name: str, replicas: int = 2, **spec: Any) -> Obj:
    return {
        "apiVersion": "trainop.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {
            "image": "trainer:1",
            "entrypoint": {"module": "trainop_runtime.examples.tinylm"},
            "resources": {"gpus": 1},
            "replicas": replicas,
            "minReplicas": 1,
            "maxReplicas": 4,
            "failurePolicy": {"backoffSeconds": 0},
            **spec,
        },
    }


def running_workers(cluster: Cluster, ns: str, name: str, n: int, timeout: float = 60) -> list[Obj]:
    def ready() -> list[Obj] | None:
        pods = [
            p
            for p in cluster.list("pods", ns, WORKERS.format(name=name))
            if not p["metadata"].get("deletionTimestamp") and p["status"].get("phase") == "Running"
        ]
        return pods if len(pods) == n else None

    return wait_for(f"{n} running workers of {name}", ready, timeout)


def phase(cluster: Cluster, ns: str, name: str, want: str, timeout: float = 60) -> Obj:
    def reached() -> Obj | None:
        status = cluster.get("trainingjob", name, ns).get("status") or {}
        return status if status.get("phase") == want else None

    return wait_for(f"{name} {want}", reached, timeout)


def rendered_manifest(release: Release) -> list[Obj]:
    result = release.helm("get", "manifest", release.name)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def lease_holder(release: Release) -> str:
    out = release.cluster.kubectl(
        "get", "lease", release.fullname, "-n", release.namespace,
        "-o", "jsonpath={.spec.holderIdentity}", "--ignore-not-found",
    )  # fmt: skip
    return out.strip()


def refusals(log: str) -> list[str]:
    """Log lines where the API server refused the operator something: Kopf and
    trainop's KubeError both spell a 403 out as Forbidden."""
    return [
        line
        for line in log.splitlines()
        if "forbidden" in line.lower() or "not enough permissions" in line.lower()
    ]

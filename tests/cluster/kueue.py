"""Real Kueue (sigs.k8s.io/kueue, hack/versions.env) against the local control plane.

The manager binary comes from hack/build-tools.sh's cache; its CRDs and webhook
manifests from the downloaded Go module (never copied into the repository). What a
Deployment in kueue-system would give it, it gets here another way:

- webhooks: the apiserver calls https://127.0.0.1:PORT<path> (clientConfig.url) with
  a CA of our own instead of the webhook Service; the CRDs' conversion webhook too;
- certificates: internalCertManagement off, a serving cert with an IP SAN of 127.0.0.1
  in webhook.certDir. v0.17 also loads /etc/kueue/metrics/certs/tls.{crt,key} whenever
  internal certificates are off (cmd/kueue/main.go), metrics or not: the manager runs in
  a private mount namespace whose /etc is an overlay holding that file, so the real /etc
  is never written;
- no leader election, no metrics or visibility servers, only Kueue's own webhooks (the
  hooks of integrations that are not enabled would fail closed).
"""

from __future__ import annotations

import base64
import contextlib
import json
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.cluster import gomod
from tests.procs import stop_group

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
FRAMEWORK = "TrainingJob.v1alpha1.trainop.dev"
# The CRDs the module's kustomization points at the conversion webhook.
CONVERTED = ("localqueues", "clusterqueues", "cohorts", "workloads", "multikueueclusters")
PRIVATE_MOUNTS = ("unshare", "-m", "--propagation", "private")
WEBHOOK_CONFIGS = ("trainop-test-kueue-mutating", "trainop-test-kueue-validating")


def binary(cache: Path) -> Path:
    return gomod.built(cache, "kueue", "KUEUE_VERSION") / "kueue"


def module_dir() -> Path:
    """The Kueue module in the Go module cache (downloaded once, then read from there)."""
    return gomod.module_dir(f"sigs.k8s.io/kueue@{gomod.versions()['KUEUE_VERSION']}")


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_certs(d: Path) -> None:
    """A CA and a serving certificate for 127.0.0.1 (tls.crt/tls.key, as certDir wants)."""
    d.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
        "-keyout", str(d / "ca.key"), "-out", str(d / "ca.crt"), "-subj", "/CN=kueue-test-ca",
    )  # fmt: skip
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(d / "tls.key"),
        "-out", str(d / "tls.csr"), "-subj", "/CN=kueue-webhook",
    )  # fmt: skip
    ext = d / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl(
        "x509", "-req", "-in", str(d / "tls.csr"), "-CA", str(d / "ca.crt"),
        "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-days", "3650",
        "-out", str(d / "tls.crt"), "-extfile", str(ext),
    )  # fmt: skip


def crds(module: Path, url: str, ca_bundle: str) -> list[dict[str, Any]]:
    out = []
    for path in sorted((module / "config" / "components" / "crd" / "bases").glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        if crd["spec"]["names"]["plural"] in CONVERTED:
            crd["spec"]["conversion"] = {
                "strategy": "Webhook",
                "webhook": {
                    "clientConfig": {"url": f"{url}/convert", "caBundle": ca_bundle},
                    "conversionReviewVersions": ["v1"],
                },
            }
        out.append(crd)
    return out


def webhook_configs(module: Path, url: str, ca_bundle: str) -> list[dict[str, Any]]:
    """The module's webhook configurations, Kueue's own hooks only, called by URL."""
    manifest = module / "config" / "components" / "webhook" / "manifests.yaml"
    out = []
    for doc, name in zip(
        [d for d in yaml.safe_load_all(manifest.read_text()) if d], WEBHOOK_CONFIGS, strict=True
    ):
        hooks = []
        for hook in doc["webhooks"]:
            path = hook["clientConfig"]["service"]["path"]
            if "kueue-x-k8s-io" not in path:
                continue
            hook["clientConfig"] = {"url": f"{url}{path}", "caBundle": ca_bundle}
            hooks.append(hook)
        out.append({**doc, "metadata": {"name": name}, "webhooks": hooks})
    return out


def configuration(port: int, health_port: int, cert_dir: Path) -> dict[str, Any]:
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": "kueue-system",
        "manageJobsWithoutQueueName": False,
        "health": {"healthProbeBindAddress": f"{HOST}:{health_port}"},
        "metrics": {"bindAddress": "0"},
        "webhook": {"host": HOST, "port": port, "certDir": str(cert_dir)},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        # An empty list means Kueue's defaults; batch/job alone is the smallest (its webhook
        # is not installed: no test runs a Job).
        "integrations": {"frameworks": ["batch/job"], "externalFrameworks": [FRAMEWORK]},
        # As many clusters run it: an admitted Workload that does not report PodsReady
        # within the timeout is evicted (trainop writes the condition).
        "waitForPodsReady": {"timeout": "3m", "blockAdmission": False},
        # The on-demand visibility API would start another API server on :8082.
        "featureGates": {"VisibilityOnDemand": False},
    }


@dataclass
class Kueue:
    proc: subprocess.Popen[bytes]
    log: Path
    webhook_port: int
    health_port: int
    started_seconds: float

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


def _wait(what: str, check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not after {timeout}s")
        time.sleep(0.5)


def _established(cluster: Any) -> bool:
    out = cluster.kubectl("get", "crd", "-o", "json", check=False)
    try:
        items = json.loads(out)["items"]
    except (ValueError, KeyError):
        return False
    ours = [i for i in items if i["spec"]["group"] == "kueue.x-k8s.io"]
    return bool(ours) and all(
        any(
            x["type"] == "Established" and x["status"] == "True"
            for x in (i.get("status") or {}).get("conditions") or []
        )
        for i in ours
    )


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/readyz", timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def start(cluster: Any, workdir: Path, free_port: Any, cache: Path) -> Kueue:
    """Install Kueue's CRDs and webhooks and run its manager; returns once a webhook call
    through the API server succeeds. `cluster` is the tests' Cluster (kubectl)."""
    t0 = time.monotonic()
    exe = binary(cache)
    module = module_dir()
    certs = workdir / "certs"
    make_certs(certs)
    ca_bundle = base64.b64encode((certs / "ca.crt").read_bytes()).decode()
    port, health_port = free_port(), free_port()
    url = f"https://{HOST}:{port}"
    apply = ("apply", "--server-side", "--force-conflicts", "-f", "-")
    for obj in [*crds(module, url, ca_bundle), *webhook_configs(module, url, ca_bundle)]:
        cluster.kubectl(*apply, input=json.dumps(obj))
    cluster.kubectl("create", "namespace", "kueue-system", check=False)
    _wait("Kueue's CRDs established", lambda: _established(cluster), 60)
    config = workdir / "config.yaml"
    config.write_text(json.dumps(configuration(port, health_port, certs)))
    # /etc/kueue/metrics/certs, in an overlay of /etc that only the manager sees.
    upper, work = workdir / "etc-upper", workdir / "etc-work"
    (upper / "kueue" / "metrics" / "certs").mkdir(parents=True, exist_ok=True)
    work.mkdir(exist_ok=True)
    for name in ("tls.crt", "tls.key"):
        (upper / "kueue" / "metrics" / "certs" / name).write_bytes((certs / name).read_bytes())
    script = (
        f"mount -t overlay overlay -o lowerdir=/etc,upperdir={upper},workdir={work} /etc "
        f'&& exec "$0" --config "$1"'
    )
    log = workdir / "kueue.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [*PRIVATE_MOUNTS, "sh", "-c", script, str(exe), str(config)],
            env={**cluster.env, "KUBECONFIG": str(cluster.kubeconfig)},
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    handle = Kueue(proc, log, port, health_port, 0.0)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if not handle.alive():
            raise RuntimeError(f"kueue exited:\n{handle.tail()}")
        if _ready(health_port) and _webhooks_answer(cluster):
            handle.started_seconds = time.monotonic() - t0
            return handle
        time.sleep(0.5)
    stop(cluster, handle)
    raise RuntimeError(f"kueue not ready after 120s:\n{handle.tail()}")


def _webhooks_answer(cluster: Any) -> bool:
    probe = {
        "apiVersion": "kueue.x-k8s.io/v1beta2",
        "kind": "ResourceFlavor",
        "metadata": {"name": "webhook-probe"},
    }
    out = cluster.kubectl(
        "create", "--dry-run=server", "-f", "-", input=json.dumps(probe), check=False
    )
    return "created (server dry run)" in out


def stop(cluster: Any, handle: Kueue | None) -> None:
    """Stop the manager and remove what it installed, so later tests see no Kueue.
    Queues and flavors go first, while the manager can still drop their finalizers:
    a CRD whose objects keep one would stay (Terminating) and still be served."""
    if handle is not None and handle.alive():
        cluster.kubectl(
            "delete", "clusterqueues,localqueues,resourceflavors,workloads", "--all", "-A",
            "--timeout=60s", check=False,
        )  # fmt: skip
    if handle is not None:
        stop_group(handle.proc, grace=10)
    for kind, name in (
        ("mutatingwebhookconfiguration", WEBHOOK_CONFIGS[0]),
        ("validatingwebhookconfiguration", WEBHOOK_CONFIGS[1]),
    ):
        cluster.kubectl("delete", kind, name, "--ignore-not-found", check=False)
    with contextlib.suppress(Exception):
        names = [
            f"{p}.kueue.x-k8s.io"
            for p in (
                "admissionchecks", "clusterqueues", "cohorts", "localqueues",
                "multikueueclusters", "multikueueconfigs", "provisioningrequestconfigs",
                "resourceflavors", "topologies", "workloadpriorityclasses", "workloads",
            )
        ]  # fmt: skip
        cluster.kubectl("delete", "crd", *names, "--ignore-not-found", "--wait=false", check=False)


def apply_queue(
    cluster: Any, ns: str, quota: dict[str, str], node_labels: dict[str, str], flavor: str
) -> str:
    """A ResourceFlavor `<ns>-<flavor>` with these node labels, a ClusterQueue of `quota`
    for this namespace only (preempting lower priorities within it) and the LocalQueue
    `research`. Returns the flavor's name."""
    name = f"{ns}-{flavor}"
    cluster.apply(
        {
            "apiVersion": "kueue.x-k8s.io/v1beta2",
            "kind": "ResourceFlavor",
            "metadata": {"name": name},
            "spec": {"nodeLabels": node_labels} if node_labels else {},
        }
    )
    resources = [{"name": r, "nominalQuota": q} for r, q in quota.items()]
    cluster.apply(
        {
            "apiVersion": "kueue.x-k8s.io/v1beta2",
            "kind": "ClusterQueue",
            "metadata": {"name": ns},
            "spec": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
                "preemption": {"withinClusterQueue": "LowerPriority"},
                "resourceGroups": [
                    {
                        "coveredResources": list(quota),
                        "flavors": [{"name": name, "resources": resources}],
                    }
                ],
            },
        }
    )
    cluster.apply(
        {
            "apiVersion": "kueue.x-k8s.io/v1beta2",
            "kind": "LocalQueue",
            "metadata": {"name": "research", "namespace": ns},
            "spec": {"clusterQueue": ns},
        }
    )
    return name

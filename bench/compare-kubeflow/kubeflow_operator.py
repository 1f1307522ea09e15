"""Kubeflow's training operator (v1, PyTorchJob) as a child process on the local control plane.

Installed the way its own manifests install it, less the Deployment: the PyTorchJob CRD
and the validating webhook come from the Go module's manifests (never copied here), the
webhook's Service reference becomes a URL on 127.0.0.1 (the API server reaches no pod
network here), and the operator runs with its defaults except for what a local process
needs: one watched namespace, free ports, only the pytorchjob scheme.

Its webhook server reads its certificate from a fixed path,
/tmp/k8s-webhook-server/serving-certs (pkg/cert/cert.go), which a pod gets from a Secret
volume. Here the operator runs in a private mount namespace with a tmpfs over
/tmp/k8s-webhook-server holding the certificate: the machine's /tmp is never written
but for an empty mount point. The same certificate goes into the Secret
kubeflow/training-operator-webhook-cert, which the operator's cert rotator reads,
finds valid, and leaves alone.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from tests.cluster.conftest import Cluster, localcluster, wait_established, wait_for  # noqa: E402
from tests.procs import stop_group  # noqa: E402

VERSION = "v1.9.2"
BINARY = "training-operator.v1"
AGENTS = ("training-operator",)  # client-go's user agent: the binary's name first
WEBHOOK_ROOT = Path("/tmp/k8s-webhook-server")  # noqa: S108  (hard-coded in pkg/cert/cert.go)
OPERATOR_NS = "kubeflow"  # pkg/cert's default without MY_POD_NAMESPACE
SECRET = "training-operator-webhook-cert"  # noqa: S105  (a Secret's name, no password)
WEBHOOK_CONFIG = "validator.training-operator.kubeflow.org"
SERVICE_DNS = f"training-operator.{OPERATOR_NS}.svc"
CA_NAME = "training-operator-ca"  # the rotator checks its CA against this name
API = "/apis/kubeflow.org/v1"


def build() -> tuple[Path, Path]:
    """The operator's bin dir and the module's source dir (build.sh, cached by version)."""
    out = subprocess.run(
        ["bash", str(HERE / "build.sh")],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "KUBEFLOW_VERSION": VERSION},
    ).stdout
    fields = dict(kv.split("=", 1) for kv in out.strip().splitlines()[-1].split())
    return Path(fields["KUBEFLOW_BIN"]), Path(fields["KUBEFLOW_SRC"])


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_certs(d: Path) -> None:
    """A CA the rotator accepts as its own (PKCS#1 key, named training-operator-ca) and
    a serving certificate for both the in-cluster Service name the rotator checks and
    127.0.0.1, where the API server calls the webhook."""
    d.mkdir(parents=True, exist_ok=True)
    _openssl("genrsa", "-traditional", "-out", str(d / "ca.key"), "2048")
    _openssl(
        "req", "-x509", "-key", str(d / "ca.key"), "-out", str(d / "ca.crt"), "-days", "3650",
        "-subj", f"/CN={CA_NAME}", "-addext", f"subjectAltName=DNS:{CA_NAME}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,digitalSignature,keyEncipherment",
    )  # fmt: skip
    _openssl("genrsa", "-traditional", "-out", str(d / "tls.key"), "2048")
    _openssl(
        "req", "-new", "-key", str(d / "tls.key"), "-out", str(d / "tls.csr"),
        "-subj", f"/CN={SERVICE_DNS}",
    )  # fmt: skip
    ext = d / "tls.ext"
    ext.write_text(f"subjectAltName=DNS:{SERVICE_DNS},IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    _openssl(
        "x509", "-req", "-in", str(d / "tls.csr"), "-CA", str(d / "ca.crt"),
        "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-days", "3650",
        "-extfile", str(ext), "-out", str(d / "tls.crt"),
    )  # fmt: skip


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def webhook_config(src: Path, certs: Path, port: int) -> dict[str, Any]:
    """The module's PyTorchJob validating webhook, pointed at 127.0.0.1:port."""
    docs = yaml.safe_load_all((src / "manifests/base/webhook/manifests.yaml").read_text())
    vwc = next(d for d in docs if d and d["kind"] == "ValidatingWebhookConfiguration")
    hooks = [h for h in vwc["webhooks"] if "pytorchjob" in h["name"]]
    for h in hooks:
        path = h["clientConfig"]["service"]["path"]
        h["clientConfig"] = {
            "url": f"https://127.0.0.1:{port}{path}",
            "caBundle": _b64(certs / "ca.crt"),
        }
    return {
        "apiVersion": vwc["apiVersion"],
        "kind": vwc["kind"],
        "metadata": {"name": WEBHOOK_CONFIG},
        "webhooks": hooks,
    }


def install(cluster: Cluster, src: Path, certs: Path, webhook_port: int) -> None:
    """The PyTorchJob CRD, the webhook certificate's Secret and the webhook."""
    crd = src / "manifests/base/crds/kubeflow.org_pytorchjobs.yaml"
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd))
    wait_established(cluster, "pytorchjobs.kubeflow.org")
    cluster.kubectl("create", "namespace", OPERATOR_NS, check=False)
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": SECRET, "namespace": OPERATOR_NS},
        "data": {name: _b64(certs / name) for name in ("ca.crt", "ca.key", "tls.crt", "tls.key")},
    }
    cluster.apply(secret)
    cluster.apply(webhook_config(src, certs, webhook_port))


# Runs inside the private mount namespace: $1 the certificate dir, then the operator's argv.
_IN_NAMESPACE = (
    f"mount -t tmpfs -o size=1m trainop-bench {WEBHOOK_ROOT} && "
    f"mkdir {WEBHOOK_ROOT}/serving-certs && "
    f'cp "$1/tls.crt" "$1/tls.key" {WEBHOOK_ROOT}/serving-certs/ && '
    'shift && exec "$@"'
)


class KubeflowOperator:
    """training-operator.v1 watching one namespace, in its own mount namespace. Its pid
    is the operator's own (unshare and sh exec into it), for /proc CPU and RSS."""

    def __init__(self, cluster: Cluster, bin_dir: Path, certs: Path, log: Path) -> None:
        self.cluster = cluster
        self.binary = bin_dir / BINARY
        self.certs = certs
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.webhook_port = localcluster.free_port()
        self.probe_port = localcluster.free_port()
        self.metrics_port = localcluster.free_port()

    def start(self, namespace: str) -> None:
        WEBHOOK_ROOT.mkdir(exist_ok=True)  # the mount point; stays empty outside
        argv = [
            "unshare", "--mount", "--propagation", "private", "--",
            "sh", "-c", _IN_NAMESPACE, "sh", str(self.certs),
            str(self.binary),
            f"--namespace={namespace}",
            "--enable-scheme=pytorchjob",
            f"--webhook-server-port={self.webhook_port}",
            f"--metrics-bind-address=127.0.0.1:{self.metrics_port}",
            f"--health-probe-bind-address=127.0.0.1:{self.probe_port}",
        ]  # fmt: skip
        env = {k: v for k, v in self.cluster.env.items() if k != "MY_POD_NAMESPACE"}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        wait_for("Kubeflow's operator ready (certificates, webhook)", self._ready, timeout=90)

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"training-operator exited: {self.log.read_text()[-3000:]}")
        try:
            url = f"http://127.0.0.1:{self.probe_port}/readyz"
            with urllib.request.urlopen(url, timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc, grace=15)
        self.proc = None


def pytorchjob(namespace: str, name: str, workers: int) -> dict[str, Any]:
    """The twin of a TrainingJob with `workers` elastic torchrun workers: Worker replicas
    only (elastic jobs have no Master), restarted on retryable exit codes (>= 128, the
    ones a killed or preempted worker exits with), no GPU request."""
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "runPolicy": {"backoffLimit": 1000},
            "nprocPerNode": "1",
            "elasticPolicy": {"minReplicas": 1, "maxReplicas": workers, "rdzvBackend": "c10d"},
            "pytorchReplicaSpecs": {
                "Worker": {
                    "replicas": workers,
                    "restartPolicy": "ExitCode",
                    "template": {
                        "spec": {
                            "containers": [
                                {
                                    "name": "pytorch",
                                    "image": "trainer:1",
                                    "command": ["python", "-m", "m"],
                                }
                            ]
                        }
                    },
                }
            },
        },
    }


def job_path(namespace: str, name: str | None = None) -> str:
    path = f"{API}/namespaces/{namespace}/pytorchjobs"
    return f"{path}/{name}" if name else path

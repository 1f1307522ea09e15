#!/usr/bin/env python3
"""A real local Kubernetes control plane with kwok GPU nodes, on 127.0.0.1 only.

    python hack/localcluster.py up      # build tools if needed, start, print KUBECONFIG
    python hack/localcluster.py up --real-node   # plus one kubelet that runs containers
    python hack/localcluster.py down    # stop everything and delete its state
    python hack/localcluster.py status

etcd, kube-apiserver (RBAC on), kube-controller-manager (garbage collection,
service accounts), kube-scheduler and kwok run as local processes; with
--real-node also containerd, CoreDNS and a kubelet (hack/realnode.py), and the
API server listens on the node's bridge address instead, so pods can reach it. State, logs
and the kubeconfig live under $TRAINOP_CLUSTER_DIR (default
~/.cache/trainop/cluster). Binaries come from hack/build-tools.sh's cache.
Only the standard library is used, so it runs before any pip install.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import realnode  # a sibling script, not a package

HACK = Path(__file__).resolve().parent
HOST = "127.0.0.1"
# The fake GPU nodes every test can rely on: name -> GPUs. One CPU-only node too.
GPU_NODES = {"gpu-node-0": 8, "gpu-node-1": 8, "gpu-node-2": 4, "cpu-node-0": 0}


def cache_dir() -> Path:
    return Path(os.environ.get("TRAINOP_CACHE", Path.home() / ".cache" / "trainop"))


def cluster_dir() -> Path:
    return Path(os.environ.get("TRAINOP_CLUSTER_DIR", cache_dir() / "cluster"))


def versions() -> dict[str, str]:
    out = {}
    for raw in (HACK / "versions.env").read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key] = value
    return out


@dataclass(frozen=True)
class Bins:
    kube: Path
    etcd: Path
    kwok: Path
    helm: Path
    coredns: Path

    @property
    def kubectl(self) -> Path:
        return self.kube / "kubectl"


def bins(build: bool = True) -> Bins:
    v = versions()
    b = Bins(
        kube=cache_dir() / "bin" / f"kube-{v['K8S_VERSION']}",
        etcd=cache_dir() / "bin" / f"etcd-{v['ETCD_VERSION']}",
        kwok=cache_dir() / "bin" / f"kwok-{v['KWOK_VERSION']}",
        helm=cache_dir() / "bin" / f"helm-{v['HELM_VERSION']}",
        coredns=cache_dir() / "bin" / f"coredns-{v['COREDNS_VERSION']}",
    )
    tools = (b.kube, b.etcd, b.kwok, b.helm, b.coredns)
    missing = [p for p in tools if not (p / ".done").exists()]
    if missing:
        if not build:
            raise SystemExit(f"missing tool builds {missing}: run hack/build-tools.sh")
        subprocess.run(["bash", str(HACK / "build-tools.sh")], check=True)
    return b


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_pki(d: Path) -> None:
    """A CA, the API server's serving cert, an admin client cert (system:masters) and
    the service-account signing key. Every component authenticates as admin: this is
    a test cluster; RBAC is still enforced for everyone else."""
    d.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "3650",
        "-keyout",
        str(d / "ca.key"),
        "-out",
        str(d / "ca.crt"),
        "-subj",
        "/CN=trainop-ca",
    )
    ext = d / "server.ext"
    ext.write_text(
        f"subjectAltName=IP:127.0.0.1,IP:{realnode.NODE_IP},DNS:localhost,DNS:kubernetes,"
        "DNS:kubernetes.default,DNS:kubernetes.default.svc,"
        f"DNS:kubernetes.default.svc.{realnode.DNS_DOMAIN},IP:{realnode.KUBERNETES_SERVICE_IP}\n"
    )
    for name, subj, extfile in (
        ("server", "/CN=kube-apiserver", str(ext)),
        ("admin", "/O=system:masters/CN=trainop-admin", None),
    ):
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(d / f"{name}.key"),
            "-out",
            str(d / f"{name}.csr"),
            "-subj",
            subj,
        )
        sign = [
            "x509",
            "-req",
            "-in",
            str(d / f"{name}.csr"),
            "-CA",
            str(d / "ca.crt"),
            "-CAkey",
            str(d / "ca.key"),
            "-CAcreateserial",
            "-days",
            "3650",
            "-out",
            str(d / f"{name}.crt"),
        ]
        if extfile:
            sign += ["-extfile", extfile]
        _openssl(*sign)
    _openssl("genrsa", "-out", str(d / "sa.key"), "2048")
    _openssl("rsa", "-in", str(d / "sa.key"), "-pubout", "-out", str(d / "sa.pub"))


def write_kubeconfig(path: Path, pki: Path, port: int, host: str = HOST) -> None:
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "trainop",
                        "cluster": {
                            "server": f"https://{host}:{port}",
                            "certificate-authority": str(pki / "ca.crt"),
                        },
                    }
                ],
                "users": [
                    {
                        "name": "admin",
                        "user": {
                            "client-certificate": str(pki / "admin.crt"),
                            "client-key": str(pki / "admin.key"),
                        },
                    }
                ],
                "contexts": [
                    {"name": "trainop", "context": {"cluster": "trainop", "user": "admin"}}
                ],
                "current-context": "trainop",
            },
            indent=2,
        )
    )


def _start(d: Path, name: str, argv: list[str]) -> int:
    log = (d / "logs" / f"{name}.log").open("ab")
    proc = subprocess.Popen(
        argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
    )
    (d / "pids" / f"{name}.pid").write_text(str(proc.pid))
    return proc.pid


def _wait(what: str, check, timeout: float, d: Path) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:  # any failure means "not yet"
            last = exc
        time.sleep(0.2)
    logs = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in (d / "logs").glob("*.log"))
    raise SystemExit(f"{what} not ready after {timeout}s ({last})\n{logs}")


def _healthy(port: int, pki: Path, host: str = HOST) -> bool:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    with urllib.request.urlopen(f"https://{host}:{port}/readyz", context=ctx, timeout=2) as r:
        return r.status == 200


def kubectl(b: Bins, kubeconfig: Path, *args: str, input: str | None = None) -> str:
    res = subprocess.run(
        [str(b.kubectl), "--kubeconfig", str(kubeconfig), *args],
        input=input,
        capture_output=True,
        text=True,
        check=False,
    )
    if res.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)}: {res.stderr.strip()}")
    return res.stdout


def gpu_node(name: str, gpus: int) -> dict[str, object]:
    capacity = {"cpu": "64", "memory": "512Gi", "pods": "110"}
    labels = {"kubernetes.io/hostname": name, "type": "kwok", "kubernetes.io/os": "linux"}
    if gpus:
        capacity["nvidia.com/gpu"] = str(gpus)
        labels["nvidia.com/gpu.product"] = "NVIDIA-H100-80GB-HBM3"
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels, "annotations": {"kwok.x-k8s.io/node": "fake"}},
        "status": {"capacity": capacity, "allocatable": capacity},
    }


AUDIT_POLICY = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    verbs: [create, update, patch, delete, deletecollection]
  - level: None
"""
# Reads too (not watches: those last as long as the client), for benchmarks that count
# every request a controller sends. Off by default: most clients' reads are noise.
AUDIT_POLICY_WITH_READS = AUDIT_POLICY.replace(
    "verbs: [create, update, patch, delete, deletecollection]",
    "verbs: [get, list, create, update, patch, delete, deletecollection]",
)


def audit_log(d: Path | None = None) -> Path:
    """The API server's audit log: one JSON line per write request (and per get or
    list with `up(audit_reads=True)`)."""
    return (d or cluster_dir()) / "logs" / "audit.log"


def _audit_policy_text(reads: bool) -> str:
    return AUDIT_POLICY_WITH_READS if reads else AUDIT_POLICY


def _audit_policy(d: Path, reads: bool) -> Path:
    path = d / "audit-policy.yaml"
    path.write_text(_audit_policy_text(reads))
    return path


def up(real_node: bool = False, audit_reads: bool = False) -> Path:
    d = cluster_dir()
    kubeconfig = d / "kubeconfig"
    policy = d / "audit-policy.yaml"
    same_policy = policy.exists() and policy.read_text() == _audit_policy_text(audit_reads)
    if running(d) and real_node == (d / "node").exists() and same_policy:
        return kubeconfig
    down()  # stale state from a stopped session: its pids may belong to others now
    b = bins()
    t0 = time.monotonic()
    shutil.rmtree(d, ignore_errors=True)
    for sub in ("logs", "pids", "etcd"):
        (d / sub).mkdir(parents=True)
    pki = d / "pki"
    make_pki(pki)
    # Pods cannot reach 127.0.0.1: with a real node the API server listens on its bridge.
    api_host = realnode.prepare_network() if real_node else HOST
    etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
    write_kubeconfig(kubeconfig, pki, api_port, api_host)
    node_flags = (
        [
            # The API server reaches the kubelet (logs, exec) by its address, with a client cert.
            "--kubelet-preferred-address-types",
            "InternalIP",
            "--kubelet-client-certificate",
            str(pki / "admin.crt"),
            "--kubelet-client-key",
            str(pki / "admin.key"),
        ]
        if real_node
        else []
    )
    _start(
        d,
        "etcd",
        [
            str(b.etcd / "etcd"),
            "--data-dir",
            str(d / "etcd"),
            "--listen-client-urls",
            f"http://{HOST}:{etcd_port}",
            "--advertise-client-urls",
            f"http://{HOST}:{etcd_port}",
            "--listen-peer-urls",
            f"http://{HOST}:{peer_port}",
            "--initial-advertise-peer-urls",
            f"http://{HOST}:{peer_port}",
            "--initial-cluster",
            f"default=http://{HOST}:{peer_port}",
            # A throwaway test cluster: fsync buys nothing but latency here.
            "--unsafe-no-fsync",
            "--quota-backend-bytes",
            str(2 * 1024**3),
        ],
    )
    _start(
        d,
        "kube-apiserver",
        [
            str(b.kube / "kube-apiserver"),
            "--etcd-servers",
            f"http://{HOST}:{etcd_port}",
            "--bind-address",
            api_host,
            "--advertise-address",
            api_host,
            "--secure-port",
            str(api_port),
            *node_flags,
            "--tls-cert-file",
            str(pki / "server.crt"),
            "--tls-private-key-file",
            str(pki / "server.key"),
            "--client-ca-file",
            str(pki / "ca.crt"),
            "--service-account-issuer",
            "https://kubernetes.default.svc",
            "--service-account-key-file",
            str(pki / "sa.pub"),
            "--service-account-signing-key-file",
            str(pki / "sa.key"),
            "--service-cluster-ip-range",
            "10.96.0.0/16",
            "--authorization-mode",
            "Node,RBAC",
            "--allow-privileged",
            "--endpoint-reconciler-type",
            "none",
            # Every write, with the user agent that sent it (tests tell replicas apart).
            "--audit-policy-file",
            str(_audit_policy(d, audit_reads)),
            "--audit-log-path",
            str(audit_log(d)),
            "--audit-log-format",
            "json",
            "--audit-log-maxsize",
            "200",
        ],
    )
    _wait("kube-apiserver", lambda: _healthy(api_port, pki, api_host), 120, d)
    common = ["--kubeconfig", str(kubeconfig), "--leader-elect=false", "--bind-address", HOST]
    _start(
        d,
        "kube-controller-manager",
        [
            str(b.kube / "kube-controller-manager"),
            *common,
            "--secure-port",
            str(free_port()),
            "--service-account-private-key-file",
            str(pki / "sa.key"),
            "--root-ca-file",
            str(pki / "ca.crt"),
            "--use-service-account-credentials=false",
            "--controllers",
            "*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller,-route",
            # Faster than the defaults so node-loss tests run in seconds, not minutes.
            "--node-monitor-grace-period",
            "20s",
            "--node-monitor-period",
            "2s",
            "--concurrent-gc-syncs",
            "20",
        ],
    )
    _start(
        d,
        "kube-scheduler",
        [
            str(b.kube / "kube-scheduler"),
            *common,
            "--secure-port",
            str(free_port()),
        ],
    )
    _start(
        d,
        "kwok",
        [
            str(b.kwok / "kwok"),
            "--kubeconfig",
            str(kubeconfig),
            "--manage-all-nodes=false",
            "--manage-nodes-with-annotation-selector",
            "kwok.x-k8s.io/node=fake",
            "--config",
            str(HACK / "kwok-stages.yaml"),
            "--server-address",
            f"{HOST}:{free_port()}",
            "--node-ip",
            "10.0.1.1",
            "--cidr",
            "10.0.0.0/16",
        ],
    )
    for name, gpus in GPU_NODES.items():
        kubectl(b, kubeconfig, "apply", "-f", "-", input=json.dumps(gpu_node(name, gpus)))
    if real_node:
        realnode.start(
            d,
            cache_dir(),
            b.kube,
            b.coredns / "coredns",
            kubeconfig,
            api_port,
            lambda name, argv: _start(d, name, argv),
            free_port,
            lambda what, check, timeout: _wait(what, check, timeout, d),
        )
    nodes = len(GPU_NODES) + (1 if real_node else 0)
    _wait("nodes Ready", lambda: _nodes_ready(b, kubeconfig, nodes), 120, d)
    _wait(
        "default ServiceAccount",
        lambda: bool(kubectl(b, kubeconfig, "get", "sa", "default", "-o", "name")),
        60,
        d,
    )
    (d / "started-in-seconds").write_text(f"{time.monotonic() - t0:.1f}\n")
    return kubeconfig


def running(d: Path | None = None) -> bool:
    """A live cluster answers /readyz; pids alone can be recycled after a reboot."""
    d = d or cluster_dir()
    kubeconfig = d / "kubeconfig"
    if not kubeconfig.exists() or not any(_alive(p) for p in _pids(d)):
        return False
    server = json.loads(kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
    host, _, port = server.removeprefix("https://").rpartition(":")
    try:
        return _healthy(int(port), d / "pki", host)
    except (OSError, ValueError):
        return False


def _nodes_ready(b: Bins, kubeconfig: Path, expected: int) -> bool:
    out = kubectl(
        b,
        kubeconfig,
        "get",
        "nodes",
        "-o",
        "jsonpath={range .items[*]}{.status.conditions[?(@.type=='Ready')].status} {end}",
    )
    states = out.split()
    return len(states) == expected and all(s == "True" for s in states)


def _pids(d: Path) -> list[int]:
    return [int(p.read_text()) for p in (d / "pids").glob("*.pid")] if (d / "pids").exists() else []


def _started_at(pid: int) -> float:
    """When the process started, in seconds since the epoch (proc(5): stat field 22)."""
    ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    boot = next(
        float(line.split()[1])
        for line in Path("/proc/stat").read_text().splitlines()
        if line.startswith("btime ")
    )
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def _ours(pid: int, d: Path | None = None) -> bool:
    """A cluster binary, or any trainop process (hack/demo.sh's operator), that is still
    the process its pid file was written for: one started after the file was written is
    another process that was given a recycled pid (a benchmark's own operator, say)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        started = _started_at(pid)
    except (OSError, ValueError, IndexError):
        return False
    written = [
        f.stat().st_mtime
        for f in ((d or cluster_dir()) / "pids").glob("*.pid")
        if f.read_text().strip() == str(pid)
    ]
    if written and started > max(written) + 5:  # 5 s: btime and tick rounding
        return False
    return str(cache_dir()).encode() in cmdline or b"trainop" in cmdline


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _pid_of(d: Path, name: str) -> int | None:
    f = d / "pids" / f"{name}.pid"
    pid = int(f.read_text()) if f.exists() else None
    return pid if pid is not None and _ours(pid, d) else None


def down() -> None:
    d = cluster_dir()
    # The real node first: its kubelet would restart the containers we stop.
    realnode.stop(d, lambda name: _pid_of(d, name))
    # Only our own processes: a pid whose command line is not a cluster binary is
    # someone else's after a restart, and is left alone.
    pids = [p for p in _pids(d) if _ours(p, d)]
    for pid in pids:
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)
    shutil.rmtree(d, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument(
        "--real-node",
        action="store_true",
        help="also start a kubelet with containerd that runs containers (hack/realnode.py)",
    )
    args = parser.parse_args()
    if args.command == "up":
        kubeconfig = up(real_node=args.real_node)
        took = (cluster_dir() / "started-in-seconds").read_text().strip()
        print(f"cluster up in {took}s; use it with:\n  export KUBECONFIG={kubeconfig}")
    elif args.command == "down":
        down()
        print("cluster stopped")
    else:
        alive = [p for p in _pids(cluster_dir()) if _alive(p)]
        kubeconfig = cluster_dir() / "kubeconfig"
        print(f"{len(alive)} control-plane processes running; KUBECONFIG={kubeconfig}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""One real node for the local cluster: a kubelet that runs containers (containerd + runc).

kwok nodes execute nothing; this node runs the images for real, so the path users take
(images, helm install, kubectl apply, pods that train, Prometheus scraping the sidecar)
can be tested end to end. Started by `hack/localcluster.py up --real-node`.

Everything lives under <cluster dir>/node and on one bridge of our own:

    bridge trainop0, 10.244.0.1/16   the node address, the pods' gateway, the API server's
                                     and CoreDNS's listen address (pods cannot reach 127.0.0.1)
    containerd                       root, state and socket under node/containerd
    CoreDNS                          cluster.local for pods: the store's headless Service name
    kubelet                          node name trainop-node-0, x509 + webhook auth (no anonymous)
    one iptables DNAT rule           the `kubernetes` Service (10.96.0.1:443) -> the API server,
                                     the only ClusterIP the pods use (no kube-proxy is run)

Facts this relies on, measured on this machine kind (tests/cluster/README.md):
cgroup v1 (so Kubernetes 1.34: 1.35's kubelet refuses v1), no CAP_SYS_RESOURCE (so
containerd's restrict_oom_score_adj), and a node address on a real interface.
Pods get no masquerade rule: they reach this machine's own addresses only.
Only the standard library, like localcluster.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

HACK = Path(__file__).resolve().parent
NODE_NAME = "trainop-node-0"
BRIDGE = "trainop0"
NODE_IP = "10.244.0.1"
POD_SUBNET = "10.244.0.0/16"
KUBERNETES_SERVICE_IP = "10.96.0.1"
DNS_DOMAIN = "cluster.local"
PAUSE_IMAGE = "localhost/trainop/pause:1"
# The label and taint that keep every other test's pods off this node: only a pod
# that asks for it (nodeSelector + toleration) runs real containers.
NODE_LABEL = "trainop.dev/real-node"
CHAIN = "TRAINOP-REAL-NODE"
NEEDS = ("containerd", "runc", "ctr", "iptables", "ip", "buildah", "gcc")


def node_dir(cluster: Path) -> Path:
    return cluster / "node"


def _run(*argv: str, check: bool = True, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True, **kw)  # type: ignore[call-overload]


def missing_tools() -> list[str]:
    return [t for t in NEEDS if shutil.which(t) is None]


def prepare_network() -> str:
    """The bridge and its address, before the API server binds to it."""
    if missing := missing_tools():
        raise SystemExit(
            f"the real node needs {', '.join(missing)}: run `make setup` "
            "(Debian packages containerd, runc, containernetworking-plugins, buildah)"
        )
    ours = ipaddress.ip_network(POD_SUBNET)
    for line in _run("ip", "-4", "route", "show").stdout.splitlines():
        dest = line.split()[0]
        if dest != "default" and BRIDGE not in line and ipaddress.ip_network(dest).overlaps(ours):
            raise SystemExit(f"{POD_SUBNET} is already routed on this machine: {line}")
    if _run("ip", "link", "show", BRIDGE, check=False).returncode != 0:
        _run("ip", "link", "add", BRIDGE, "type", "bridge")
    if NODE_IP not in _run("ip", "-4", "addr", "show", BRIDGE).stdout:
        _run("ip", "addr", "add", f"{NODE_IP}/16", "dev", BRIDGE)
    _run("ip", "link", "set", BRIDGE, "up")
    # Pods send to the gateway; the host must route (it answers on its own addresses).
    Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")
    return NODE_IP


def _pause_archive(cache: Path) -> Path:
    """A static pause binary in a one-file image, as a docker-archive tar (cached by source)."""
    src = HACK / "pause.c"
    key = hashlib.sha256(src.read_bytes()).hexdigest()[:12]
    out = cache / "images" / f"pause-{key}.tar"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    work = out.parent / f"pause-{key}"
    work.mkdir(exist_ok=True)
    _run("gcc", "-static", "-Os", "-o", str(work / "pause"), str(src))
    env = {**os.environ, "BUILDAH_ISOLATION": "chroot"}
    ctr = _run("buildah", "from", "scratch", env=env).stdout.strip()
    try:
        _run("buildah", "copy", ctr, str(work / "pause"), "/pause", env=env)
        _run("buildah", "config", "--entrypoint", '["/pause"]', ctr, env=env)
        _run("buildah", "commit", ctr, PAUSE_IMAGE, env=env)
    finally:
        _run("buildah", "rm", ctr, check=False, env=env)
    tmp = out.with_suffix(".part")
    tmp.unlink(missing_ok=True)
    _run("buildah", "push", PAUSE_IMAGE, f"docker-archive:{tmp}:{PAUSE_IMAGE}", env=env)
    tmp.rename(out)
    return out


def _containerd_config(n: Path) -> str:
    # TOML written by hand: containerd 1.6 (Debian bookworm), config version 2.
    return f"""version = 2
root = "{n}/containerd/root"
state = "{n}/containerd/state"
[grpc]
  address = "{n}/containerd/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # The kubelet asks for oom_score_adj -998; without CAP_SYS_RESOURCE runc then fails
  # every sandbox ("can't get final child's PID from pipe"). This clamps the request.
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{n}/cni"
"""


def _cni_config(n: Path) -> dict[str, object]:
    return {
        "cniVersion": "1.0.0",
        "name": "trainop",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                # No masquerade: pods talk to this machine and to each other, nothing else.
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_SUBNET, "gateway": NODE_IP}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(n / "ipam"),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def _kubelet_config(n: Path, pki: Path, port: int, healthz: int) -> dict[str, object]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": NODE_IP,
        "port": port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz,
        "cgroupDriver": "cgroupfs",
        "containerRuntimeEndpoint": f"unix://{n}/containerd/containerd.sock",
        "failSwapOn": False,
        "podLogsDir": str(n / "pod-logs"),
        "staticPodPath": str(n / "manifests"),
        # The API server authenticates with the admin client certificate; everyone else
        # is asked about through SubjectAccessReview. No anonymous access to this node.
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(pki / "ca.crt")},
        },
        "authorization": {"mode": "Webhook"},
        "clusterDNS": [NODE_IP],
        "clusterDomain": DNS_DOMAIN,
        "resolvConf": str(n / "resolv.conf"),
        # A shared test machine: never evict or garbage-collect the imported images for
        # disk the node does not own.
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
        },
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False,
        "registerWithTaints": [{"key": NODE_LABEL, "value": "true", "effect": "NoSchedule"}],
    }


def _corefile(kubeconfig: Path) -> str:
    return f""".:53 {{
    bind {NODE_IP}
    errors
    kubernetes {DNS_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig} trainop
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 5
}}
"""


def ctr(cluster: Path, *args: str) -> str:
    sock = node_dir(cluster) / "containerd" / "containerd.sock"
    return _run("ctr", "--address", str(sock), "--namespace", "k8s.io", *args).stdout


def import_images(cluster: Path, archives: list[Path]) -> None:
    for tar in archives:
        ctr(cluster, "images", "import", "--no-unpack=false", str(tar))


def start(
    cluster: Path,
    cache: Path,
    kube_bin: Path,
    coredns_bin: Path,
    kubeconfig: Path,
    api_port: int,
    start_proc,  # type: ignore[no-untyped-def]
    free_port,  # type: ignore[no-untyped-def]
    wait,  # type: ignore[no-untyped-def]
) -> None:
    """containerd, CoreDNS and the kubelet, as processes of this cluster: localcluster's
    own start_proc (records pids, so its down() stops them) and wait (polls, then fails
    with every log)."""
    n = node_dir(cluster)
    pki = cluster / "pki"
    for sub in ("containerd", "cni", "ipam", "kubelet", "pod-logs", "manifests"):
        (n / sub).mkdir(parents=True, exist_ok=True)
    # Network namespaces containerd makes (/run/netns/cni-*): remembered, so down() removes
    # exactly ours.
    netns = Path("/run/netns")
    (n / "netns-before").write_text(
        "\n".join(sorted(p.name for p in netns.iterdir())) if netns.exists() else ""
    )
    (n / "containerd.toml").write_text(_containerd_config(n))
    (n / "cni" / "10-trainop.conflist").write_text(json.dumps(_cni_config(n), indent=2))
    # Pods' DNS is CoreDNS (clusterDNS); nothing upstream: there is no network to forward to.
    (n / "resolv.conf").write_text(f"nameserver {NODE_IP}\n")
    (n / "Corefile").write_text(_corefile(kubeconfig))
    _iptables_service_rule(api_port)
    pause = _pause_archive(cache)

    start_proc("containerd", ["containerd", "--config", str(n / "containerd.toml")])
    wait("containerd", (n / "containerd" / "containerd.sock").exists, 30)
    wait("containerd to answer", lambda: bool(ctr(cluster, "version")), 30)
    import_images(cluster, [pause])
    start_proc("coredns", [str(coredns_bin), "-conf", str(n / "Corefile")])

    kport, healthz = free_port(), free_port()
    (n / "kubelet.yaml").write_text(json.dumps(_kubelet_config(n, pki, kport, healthz), indent=2))
    start_proc(
        "kubelet",
        [
            str(kube_bin / "kubelet"),
            "--config",
            str(n / "kubelet.yaml"),
            "--kubeconfig",
            str(kubeconfig),
            "--root-dir",
            str(n / "kubelet"),
            "--hostname-override",
            NODE_NAME,
            "--node-ip",
            NODE_IP,
            "--node-labels",
            f"{NODE_LABEL}=true",
        ],
    )


def _iptables_service_rule(api_port: int) -> None:
    """What kube-proxy would do for the one Service the pods use: in-cluster clients
    (the operator, the sidecar's progress push) dial $KUBERNETES_SERVICE_HOST:443."""
    _run("iptables", "-t", "nat", "-N", CHAIN, check=False)
    _run("iptables", "-t", "nat", "-F", CHAIN)
    _run(
        "iptables",
        "-t",
        "nat",
        "-A",
        CHAIN,
        "-d",
        f"{KUBERNETES_SERVICE_IP}/32",
        "-p",
        "tcp",
        "--dport",
        "443",
        "-j",
        "DNAT",
        "--to-destination",
        f"{NODE_IP}:{api_port}",
    )
    for hook in ("PREROUTING", "OUTPUT"):
        if _run("iptables", "-t", "nat", "-C", hook, "-j", CHAIN, check=False).returncode:
            _run("iptables", "-t", "nat", "-I", hook, "-j", CHAIN)


def _kill_cgroup_tree(root: Path) -> None:
    """SIGKILL every process in a cgroup tree, then remove the tree bottom-up."""
    if not root.exists():
        return
    for procs in root.rglob("cgroup.procs"):
        with contextlib.suppress(OSError, ValueError):
            for pid in procs.read_text().split():
                with contextlib.suppress(OSError):
                    os.kill(int(pid), signal.SIGKILL)
    time.sleep(0.3)
    for d in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):
            d.rmdir()
    with contextlib.suppress(OSError):
        root.rmdir()


def _mounts_under(prefixes: tuple[str, ...]) -> list[str]:
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        target = line.split()[4].replace("\\040", " ")
        if target.startswith(prefixes):
            out.append(target)
    return sorted(out, key=len, reverse=True)


def _drop_iptables() -> None:
    """Our DNAT chain, and the KUBE-* chains the kubelet made (filter, nat, mangle)."""
    for tool in ("iptables", "ip6tables"):
        for table in ("filter", "nat", "mangle"):
            rules = _run(tool, "-t", table, "-S", check=False).stdout.splitlines()
            chains = [
                r.split()[1]
                for r in rules
                if r.startswith("-N ") and r.split()[1].startswith(("KUBE-", CHAIN))
            ]
            for r in rules:
                parts = r.split()
                if r.startswith("-A ") and "-j" in parts and parts[parts.index("-j") + 1] in chains:
                    _run(tool, "-t", table, "-D", *parts[1:], check=False)
            for c in chains:
                _run(tool, "-t", table, "-F", c, check=False)
            for c in chains:
                _run(tool, "-t", table, "-X", c, check=False)


def stop(cluster: Path, pid_of) -> None:  # type: ignore[no-untyped-def]
    """Everything start() made, in an order that leaves nothing running or mounted:
    the kubelet first (it would restart containers), then the containers, containerd,
    the mounts, our netns, iptables chains and the bridge."""
    n = node_dir(cluster)
    if not n.exists():
        return
    for name in ("kubelet", "coredns"):
        pid = pid_of(name)
        if pid:
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)
    # Every pod's processes live under the kubelet's kubepods cgroup (cgroup v1: one tree
    # per controller). Killing them there also ends each container's runc shim.
    cg = Path("/sys/fs/cgroup")
    for ctl in sorted(cg.iterdir()) if cg.exists() else []:
        _kill_cgroup_tree(ctl / "kubepods")
    for proc in Path("/proc").iterdir():
        # containerd-shim-runc-v2 processes started for our containerd's socket.
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                if str(n).encode() in (proc / "cmdline").read_bytes():
                    os.kill(int(proc.name), signal.SIGKILL)
    pid = pid_of("containerd")
    if pid:
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)
    time.sleep(0.5)
    before = (
        set((n / "netns-before").read_text().split()) if (n / "netns-before").exists() else set()
    )
    netns = Path("/run/netns")
    ours = [p for p in netns.iterdir() if p.name not in before] if netns.exists() else []
    for target in _mounts_under((str(n) + "/", *(str(p) for p in ours))):
        _run("umount", "-l", target, check=False)
    for p in ours:
        with contextlib.suppress(OSError):
            p.unlink()
    _drop_iptables()
    _run("ip", "link", "del", BRIDGE, check=False)
    # Image layers are root-owned overlay dirs: a plain rmtree of the cluster dir follows.

"""Kubernetes Pod Security Standards (baseline, restricted) applied by the operator.

trainop creates pods with its own ServiceAccount, so whatever a podTemplate asks for
it would create on its author's behalf (the confused deputy). Each worker pod it is
about to create is checked against the level configured for the job's namespace,
with the same controls as the pod-security admission plugin
(kubernetes.io/docs/concepts/security/pod-security-standards), and a violation is
reported with the TrainingJob field that asked for it. Purely computational.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from enum import StrEnum
from typing import Any

Obj = dict[str, Any]


class Level(StrEnum):
    PRIVILEGED = "privileged"
    BASELINE = "baseline"
    RESTRICTED = "restricted"


# Baseline: capabilities a container may add (the PSS list).
BASELINE_CAPABILITIES = frozenset(
    {
        "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
        "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
    }
)  # fmt: skip
SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start", "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl", "net.ipv4.tcp_keepalive_probes",
    }
)  # fmt: skip
SELINUX_TYPES = frozenset(
    {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
)
# Restricted: the only volume sources allowed.
RESTRICTED_VOLUMES = frozenset(
    {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
     "projected", "secret"}
)  # fmt: skip
_CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")


def level_for(namespace: str, default: Level, per_namespace: Mapping[str, Level]) -> Level:
    return per_namespace.get(namespace, default)


def violations(pod_spec: Obj, level: Level, *, checkpoint_volume: str | None = None) -> list[str]:
    """What in a built worker pod's spec breaks `level`, each as 'field: why', with the
    TrainingJob field that set it. The checkpoint volume (named `checkpoint_volume` in
    the pod) is reported as spec.checkpoint.volume. Empty when the pod complies."""
    if level is Level.PRIVILEGED:
        return []
    found = list(_baseline(pod_spec, checkpoint_volume))
    if level is Level.RESTRICTED:
        found += _restricted(pod_spec, checkpoint_volume)
    return found


def _field(path: str) -> str:
    return f"spec.podTemplate.spec.{path}"


def _containers(pod: Obj) -> Iterator[tuple[str, Obj]]:
    for key in _CONTAINER_LISTS:
        for ctr in pod.get(key) or []:
            if isinstance(ctr, dict):
                yield f"{key}[name={ctr.get('name', '?')}]", ctr


def _volume_field(volume: Obj, checkpoint_volume: str | None, source: str) -> str:
    if volume.get("name") == checkpoint_volume:
        return f"spec.checkpoint.volume.{source}"
    return _field(f"volumes[name={volume.get('name', '?')}].{source}")


def _baseline(pod: Obj, checkpoint_volume: str | None) -> Iterator[str]:
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            yield f"{_field(key)}: host namespaces"
    pod_ctx = pod.get("securityContext") or {}
    yield from _security_context(pod_ctx, "securityContext")
    for sysctl in pod_ctx.get("sysctls") or []:
        name = sysctl.get("name") if isinstance(sysctl, dict) else None
        if name not in SAFE_SYSCTLS:
            yield f"{_field('securityContext.sysctls')}: sysctl {name!r} is not a safe sysctl"
    for volume in pod.get("volumes") or []:
        if isinstance(volume, dict) and "hostPath" in volume:
            where = _volume_field(volume, checkpoint_volume, "hostPath")
            yield f"{where}: hostPath volumes"
    for where, ctr in _containers(pod):
        ctx = ctr.get("securityContext") or {}
        if ctx.get("privileged"):
            yield f"{_field(where)}.securityContext.privileged: privileged containers"
        added = (ctx.get("capabilities") or {}).get("add") or []
        extra = sorted(set(map(str, added)) - BASELINE_CAPABILITIES)
        if extra:
            yield (
                f"{_field(where)}.securityContext.capabilities.add: {', '.join(extra)} "
                "beyond the baseline set"
            )
        yield from _security_context(ctx, f"{where}.securityContext")
        for port in ctr.get("ports") or []:
            if isinstance(port, dict) and port.get("hostPort"):
                yield f"{_field(where)}.ports: hostPort {port['hostPort']}"


def _security_context(ctx: Obj, path: str) -> Iterator[str]:
    """The controls shared by the pod's and each container's securityContext."""
    if (ctx.get("windowsOptions") or {}).get("hostProcess"):
        yield f"{_field(path)}.windowsOptions.hostProcess: host processes"
    se = ctx.get("seLinuxOptions") or {}
    if se.get("type", "") not in SELINUX_TYPES or se.get("user") or se.get("role"):
        yield f"{_field(path)}.seLinuxOptions: custom SELinux user, role or type"
    if ctx.get("procMount", "Default") != "Default":
        yield f"{_field(path)}.procMount: only the Default /proc mount"
    if (ctx.get("seccompProfile") or {}).get("type") == "Unconfined":
        yield f"{_field(path)}.seccompProfile: Unconfined"
    if (ctx.get("appArmorProfile") or {}).get("type") == "Unconfined":
        yield f"{_field(path)}.appArmorProfile: Unconfined"


def _restricted(pod: Obj, checkpoint_volume: str | None) -> list[str]:
    found = []
    for volume in pod.get("volumes") or []:
        if not isinstance(volume, dict):
            continue
        sources = sorted(set(volume) - {"name"} - RESTRICTED_VOLUMES)
        if sources:
            where = _volume_field(volume, checkpoint_volume, sources[0])
            found.append(f"{where}: volume type {sources[0]}")
    pod_ctx = pod.get("securityContext") or {}
    for where, ctr in _containers(pod):
        ctx = ctr.get("securityContext") or {}
        path = f"{_field(where)}.securityContext"
        if ctx.get("allowPrivilegeEscalation") is not False:
            found.append(f"{path}.allowPrivilegeEscalation: must be false")
        caps = ctx.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            found.append(f"{path}.capabilities.drop: must include ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            found.append(f"{path}.capabilities.add: only NET_BIND_SERVICE")
        non_root = ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot"))
        if non_root is not True:
            found.append(
                f"{path}.runAsNonRoot: must be true (here or in the pod's securityContext)"
            )
        if ctx.get("runAsUser", pod_ctx.get("runAsUser")) == 0:
            found.append(f"{path}.runAsUser: must not be 0")
        seccomp = (ctx.get("seccompProfile") or pod_ctx.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            found.append(f"{path}.seccompProfile: must be RuntimeDefault or Localhost")
    return found

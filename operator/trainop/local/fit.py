"""What of a TrainingJob can run on this machine: scaled down to what fits, with the
cluster-only fields named as ignored. Each change is one line the runner prints before
anything starts, so nothing is dropped silently.

A file written for a cluster (examples/llm-8xh100.yaml: 4 workers x 8 GPUs, a PVC,
Volcano) then runs here unchanged as the small job this machine can hold, instead of
32 processes fighting over 2 cores.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from decimal import Decimal

from trainop.api import constants as c
from trainop.api.spec import TrainingJobSpec
from trainop.core.build import parse_quantity

GIB = Decimal(1024**3)


@dataclass(frozen=True)
class Machine:
    cores: int
    memory_bytes: int | None
    gpus: int


@dataclass(frozen=True)
class Fit:
    spec: TrainingJobSpec  # what runs here
    notes: list[str]  # one line per change or ignored field, each saying why


def usable_cores() -> int:
    """The cores this process may run on (taskset, cgroup cpusets), not the machine's."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def this_machine(gpus: int) -> Machine:
    try:
        memory: int | None = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        memory = None
    return Machine(cores=usable_cores(), memory_bytes=memory, gpus=gpus)


def fit_to_machine(spec: TrainingJobSpec, machine: Machine, *, replicas_given: bool) -> Fit:
    """Purely computational. On a CPU run (no GPU here, or none asked for) every worker
    process needs a core of its own: workers are cut to the cores (never below
    minReplicas, never when --replicas chose them), then processes per worker. A GPU
    run keeps its shape: devices.allocate refuses one that does not fit, with the fix."""
    notes: list[str] = []
    replicas, procs = spec.replicas, spec.procs_per_node
    on_cpu = machine.gpus == 0 or spec.resources.gpus == 0
    if on_cpu and replicas * procs > machine.cores:
        if not replicas_given and replicas > machine.cores:
            replicas = max(spec.min_nodes, machine.cores)
            if replicas != spec.replicas:
                notes.append(
                    f"spec.replicas {spec.replicas} -> {replicas}: this machine has "
                    f"{machine.cores} core(s), one per worker process "
                    f"(--replicas N overrides, within {spec.min_nodes}..{spec.max_nodes})"
                )
        fitted = max(1, machine.cores // replicas)
        if fitted < procs:
            source = (
                "spec.nprocPerNode"
                if spec.nproc_per_node is not None
                else "spec.resources.gpus, with no GPU to use here"
            )
            notes.append(
                f"processes per worker {procs} -> {fitted} ({source}): "
                f"{replicas} worker(s) on {machine.cores} core(s)"
            )
            procs = fitted
        if replicas * procs > machine.cores:
            why = "--replicas" if replicas_given else f"spec.minReplicas {spec.min_nodes}"
            notes.append(
                f"{replicas} worker process(es) ({why}) share {machine.cores} core(s): "
                f"one thread each, and slower than with a core each"
            )
    notes.extend(_unreserved(spec, machine, replicas))
    ignored = cluster_only_fields(spec)
    if ignored:
        where = "; checkpoints go to the work dir" if spec.checkpoint.volume is not None else ""
        notes.append(f"ignored here, used on a cluster: {', '.join(ignored)}{where}")
    if (replicas, procs) != (spec.replicas, spec.procs_per_node):
        spec = spec.model_copy(update={"replicas": replicas, "nproc_per_node": procs})
    return Fit(spec, notes)


def _unreserved(spec: TrainingJobSpec, machine: Machine, replicas: int) -> list[str]:
    """Requests a scheduler would reserve and this machine cannot: said, not enforced
    (the workers share what there is; running out of memory shows as OOMKilled)."""
    notes = []
    res = spec.resources
    cpu = parse_quantity(res.cpu) if res.cpu is not None else None
    if cpu is not None and cpu * replicas > machine.cores:
        notes.append(
            f"spec.resources.cpu {res.cpu} per worker is not reserved here: "
            f"{replicas} worker(s) share this machine's {machine.cores} core(s)"
        )
    memory = parse_quantity(res.memory) if res.memory is not None else None
    if memory is not None and machine.memory_bytes and memory * replicas > machine.memory_bytes:
        notes.append(
            f"spec.resources.memory {res.memory} per worker is not reserved here: "
            f"{replicas} worker(s) share this machine's {machine.memory_bytes / GIB:.1f} GiB; "
            f"one that runs out ends as OOMKilled"
        )
    return notes


def cluster_only_fields(spec: TrainingJobSpec) -> list[str]:
    """The set fields that only a cluster acts on, by their YAML path. Pure."""
    sched = spec.scheduling
    fields = {
        "checkpoint.volume": spec.checkpoint.volume,
        "scheduling.schedulerName": sched.scheduler_name,
        "scheduling.priorityClassName": sched.priority_class_name,
        "scheduling.nodeSelector": sched.node_selector,
        "scheduling.tolerations": sched.tolerations,
        "scheduling.affinity": sched.affinity,
        "scheduling.gang": sched.gang,
        "podTemplate.metadata.labels": spec.pod_template.metadata.labels,
        "podTemplate.metadata.annotations": spec.pod_template.metadata.annotations,
    }
    # The trainer container's env is applied here (it reaches the process); the rest of
    # a podTemplate.spec (volumes, sidecars, security settings) is the kubelet's.
    for key, value in spec.pod_template.spec.items():
        fields[f"podTemplate.spec.{key}"] = (
            [x for x in value if not _trainer_env_only(x)] if key == "containers" else value
        )
    return [name for name, value in fields.items() if value]


def _trainer_env_only(container: object) -> bool:
    return (
        isinstance(container, dict)
        and container.get("name") == c.TRAINER_CONTAINER
        and set(container) <= {"name", "env"}
    )

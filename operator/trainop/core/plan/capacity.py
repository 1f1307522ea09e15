"""Where the job's worker pods can go: GPUs on the ready nodes their nodeSelector and
tolerations allow (the scheduler's own rules for taints), counted in whole pods.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from trainop.api.spec import TrainingJobSpec
from trainop.core import build
from trainop.core.config import OperatorConfig
from trainop.core.observe import NodeInfo, Taint, quantity_to_int
from trainop.core.plan.model import Observed


def gpu_capacity_problem(
    spec: TrainingJobSpec, obs: Observed, nodes: Iterable[NodeInfo], config: OperatorConfig
) -> str | None:
    """Why no ready node the job's pods may land on offers spec.resources.gpus, if none does.

    Placement is read from a built worker pod, so spec.podTemplate.spec overrides of
    nodeSelector and tolerations count as the scheduler will see them."""
    gpus, name = spec.resources.gpus, spec.resources.gpu_resource_name
    usable = sorted((n for n in nodes if n.ready and not n.unschedulable), key=lambda n: n.name)
    kept_off = _kept_off_each(spec, obs, config, usable)
    allowed = [n for n in usable if kept_off[n.name] is None]
    best = max((quantity_to_int(n.allocatable.get(name)) for n in allowed), default=0)
    if best >= gpus:
        room = sum(quantity_to_int(n.allocatable.get(name)) // gpus for n in allowed)
        if room >= spec.min_nodes:
            return None
        return (
            f"spec.minReplicas={spec.min_nodes} workers of {gpus} {name} cannot all be placed: "
            f"the ready nodes the pods may use have room for {room}; lower spec.minReplicas "
            "(the job grows as nodes come) or add nodes"
        )
    big = [n for n in usable if quantity_to_int(n.allocatable.get(name)) >= gpus]
    if not big:
        largest = max((quantity_to_int(n.allocatable.get(name)) for n in usable), default=0)
        return (
            f"spec.resources.gpus={gpus} but the largest ready node offers {largest} {name}; "
            f"lower spec.resources.gpus or add nodes with at least {gpus} GPUs"
        )
    others = (
        f"the largest node the pods may use offers {best} {name}"
        if allowed
        else "no ready node is left for the pods"
    )
    return (
        f"spec.resources.gpus={gpus}: {len(big)} ready node(s) offer that many {name}, but the "
        f"pods' nodeSelector and tolerations rule them all out ({big[0].name}: "
        f"{kept_off[big[0].name]}), and {others}; change spec.scheduling.nodeSelector or "
        "spec.scheduling.tolerations, or lower spec.resources.gpus"
    )


def placeable(spec: TrainingJobSpec, obs: Observed, config: OperatorConfig) -> int | None:
    """How many of the job's workers the ready nodes they may use can hold at once, by
    GPUs (None when unchecked). An upper bound: other workloads' pods are not counted."""
    gpus = spec.resources.gpus
    if not (config.capacity_check and gpus and obs.nodes is not None):
        return None
    name = spec.resources.gpu_resource_name
    nodes = usable_nodes(spec, obs, config)
    return sum(quantity_to_int(n.allocatable.get(name)) // gpus for n in nodes)


def usable_nodes(spec: TrainingJobSpec, obs: Observed, config: OperatorConfig) -> list[NodeInfo]:
    """Ready, schedulable nodes the worker pods' nodeSelector and tolerations allow."""
    ready = [n for n in (obs.nodes or {}).values() if n.ready and not n.unschedulable]
    kept_off = _kept_off_each(spec, obs, config, ready)
    return sorted((n for n in ready if kept_off[n.name] is None), key=lambda n: n.name)


def _kept_off_each(
    spec: TrainingJobSpec, obs: Observed, config: OperatorConfig, nodes: Iterable[NodeInfo]
) -> dict[str, str | None]:
    """Node name -> what keeps the worker pods off it (None: nothing). Placement is read
    from a built worker pod, so podTemplate overrides count as the scheduler sees them."""
    pod_spec = build.build_worker_pod(obs.job, spec, 0, 0, config)["spec"]
    selector = pod_spec.get("nodeSelector")
    selector = selector if isinstance(selector, dict) else {}
    tolerations = [t for t in pod_spec.get("tolerations") or [] if isinstance(t, dict)]
    return {n.name: why_kept_off(n, selector, tolerations) for n in nodes}


def why_kept_off(node: NodeInfo, selector: Mapping[str, Any], tolerations: list[Any]) -> str | None:
    """What keeps a pod with this nodeSelector and these tolerations off the node, if anything."""
    for key, want in sorted(selector.items()):
        have = node.labels.get(key)
        if have is None:
            return f"no label {key}={want}"
        if have != str(want):
            return f"label {key}={have}, not {want}"
    for taint in node.taints:
        if not any(tolerates(t, taint) for t in tolerations):
            return f"taint {taint} is not tolerated"
    return None


def tolerates(toleration: Mapping[str, Any], taint: Taint) -> bool:
    """Kubernetes' Toleration.ToleratesTaint: an empty effect matches every effect, an
    empty key with Exists every taint; Equal (the default operator) compares values."""
    effect = toleration.get("effect") or ""
    if effect and effect != taint.effect:
        return False
    key = toleration.get("key") or ""
    if key and key != taint.key:
        return False
    operator = toleration.get("operator") or "Equal"
    if operator == "Equal":
        return str(toleration.get("value") or "") == taint.value
    # Exists, or an operator newer than this code (Gt/Lt): refusing the job on a guess
    # would be worse than letting the scheduler judge.
    return True

"""Kueue as an external framework: trainop does the job controller's half itself.

Kueue knows nothing of TrainingJob. Its configuration lists
`integrations.externalFrameworks: ["TrainingJob.v1alpha1.trainop.dev"]`, and trainop
creates and owns one `Workload` per queued job, reads its admission (flavors and the
admitted worker count), gives the quota back after an eviction once the pods are gone, and
finishes the Workload with the job: what Kueue's jobframework reconciler does for the
kinds it knows (pkg/controller/jobframework/reconciler.go in sigs.k8s.io/kueue v0.17).

Purely computational: Workload and ResourceFlavor dicts in, typed views, Workload bodies
and status patches out. The adapter reads and writes them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from trainop.api import constants as c
from trainop.api.spec import TrainingJobSpec
from trainop.core import build
from trainop.core.config import OperatorConfig

ObjDict = dict[str, Any]
PODSET_WORKERS = "workers"
PODSET_STORE = "store"
# Kueue's Workload condition types (apis/kueue/v1beta2/workload_types.go).
WL_QUOTA_RESERVED = "QuotaReserved"
WL_ADMITTED = "Admitted"
WL_EVICTED = "Evicted"
WL_REQUEUED = "Requeued"
WL_FINISHED = "Finished"
WL_PODS_READY = "PodsReady"
# Eviction reasons after which Kueue's own reconciler marks the Workload Requeued=True.
_REQUEUED_AFTER = ("Preempted", "NodeFailures")
# metav1.Condition caps messages at 32768 characters.
_MESSAGE_MAX = 32768


@dataclass(frozen=True)
class WorkloadCondition:
    status: bool
    reason: str
    message: str


@dataclass(frozen=True)
class Assignment:
    """One podSetAssignment of an admission: how many pods, on which flavors."""

    count: int | None
    flavors: Mapping[str, str]  # resource name -> ResourceFlavor name


@dataclass(frozen=True)
class Placement:
    """Node constraints a pod gets from its admission: the flavors' nodeLabels and
    tolerations, then any admission check's podSetUpdates."""

    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: Sequence[ObjDict] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Flavor:
    name: str
    node_labels: Mapping[str, str]
    tolerations: Sequence[ObjDict]


@dataclass(frozen=True)
class ObservedWorkload:
    name: str
    uid: str
    resource_version: str
    owner_uid: str | None
    queue_name: str
    active: bool
    counts: Mapping[str, int]  # podSet name -> count
    min_counts: Mapping[str, int | None]
    priority_class: str | None
    cluster_queue: str | None
    assignments: Mapping[str, Assignment]
    conditions: Mapping[str, WorkloadCondition]
    # The conditions as stored: a status patch sends the whole list back.
    raw_conditions: Sequence[ObjDict]
    updates: Mapping[str, Placement]  # podSet name -> admission checks' podSetUpdates

    def holds(self, type_: str) -> bool:
        cond = self.conditions.get(type_)
        return cond is not None and cond.status

    @property
    def admitted(self) -> bool:
        return self.holds(WL_ADMITTED) and self.cluster_queue is not None

    @property
    def evicted(self) -> bool:
        return self.holds(WL_EVICTED)

    @property
    def finished(self) -> bool:
        return self.holds(WL_FINISHED)

    @property
    def reserved(self) -> bool:
        return self.holds(WL_QUOTA_RESERVED) or self.cluster_queue is not None


@dataclass(frozen=True)
class QueueView:
    """What the reconciler saw of Kueue for one labelled job."""

    served: bool  # the API server serves Kueue's Workload API
    workload: ObservedWorkload | None = None
    # The ResourceFlavors the admission names (absent ones are left out).
    flavors: Mapping[str, Flavor] = field(default_factory=dict)
    # The value of spec.scheduling.priorityClassName's PriorityClass; None when the job
    # names none or it does not exist (priority_class_missing says which).
    priority: int | None = None
    priority_class_missing: bool = False


def workload_name(job: build.JobRef) -> str:
    """Kueue's own naming (<kind>-<name>-<hash>): the hash of the UID keeps a job recreated
    under the same name from taking over the old job's Workload."""
    digest = hashlib.sha256(job.uid.encode()).hexdigest()[:5]
    return f"trainingjob-{job.name}-{digest}"


def _conditions(raw: object) -> dict[str, WorkloadCondition]:
    out: dict[str, WorkloadCondition] = {}
    for cond in raw if isinstance(raw, list) else []:
        if isinstance(cond, dict) and isinstance(cond.get("type"), str):
            out[cond["type"]] = WorkloadCondition(
                status=cond.get("status") == "True",
                reason=str(cond.get("reason") or ""),
                message=str(cond.get("message") or ""),
            )
    return out


def _tolerations(raw: object) -> list[ObjDict]:
    return [t for t in raw if isinstance(t, dict)] if isinstance(raw, list) else []


def _str_map(raw: object) -> dict[str, str]:
    return {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}


def parse_workload(obj: Mapping[str, Any]) -> ObservedWorkload:
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    owner = next(
        (r.get("uid") for r in meta.get("ownerReferences") or [] if r.get("kind") == c.KIND),
        None,
    )
    pod_sets = [p for p in spec.get("podSets") or [] if isinstance(p, dict)]
    admission = status.get("admission") or {}
    assignments = {
        str(a.get("name")): Assignment(
            count=a.get("count") if isinstance(a.get("count"), int) else None,
            flavors=_str_map(a.get("flavors")),
        )
        for a in admission.get("podSetAssignments") or []
        if isinstance(a, dict)
    }
    updates: dict[str, Placement] = {}
    for check in status.get("admissionChecks") or []:
        for up in (check or {}).get("podSetUpdates") or []:
            name = str(up.get("name"))
            before = updates.get(name, Placement())
            updates[name] = Placement(
                node_selector={**before.node_selector, **_str_map(up.get("nodeSelector"))},
                tolerations=[*before.tolerations, *_tolerations(up.get("tolerations"))],
                labels={**before.labels, **_str_map(up.get("labels"))},
                annotations={**before.annotations, **_str_map(up.get("annotations"))},
            )
    priority_ref = spec.get("priorityClassRef") or {}
    raw_conditions = status.get("conditions")
    return ObservedWorkload(
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        resource_version=str(meta.get("resourceVersion", "")),
        owner_uid=owner,
        queue_name=str(spec.get("queueName") or ""),
        active=spec.get("active", True) is not False,
        counts={str(p.get("name")): int(p.get("count") or 0) for p in pod_sets},
        min_counts={
            str(p.get("name")): p.get("minCount") if isinstance(p.get("minCount"), int) else None
            for p in pod_sets
        },
        priority_class=priority_ref.get("name"),
        cluster_queue=admission.get("clusterQueue") or None,
        assignments=assignments,
        conditions=_conditions(raw_conditions),
        raw_conditions=[dict(x) for x in raw_conditions or [] if isinstance(x, dict)],
        updates=updates,
    )


def parse_flavor(obj: Mapping[str, Any]) -> Flavor:
    spec = obj.get("spec") or {}
    return Flavor(
        name=str((obj.get("metadata") or {}).get("name", "")),
        node_labels=_str_map(spec.get("nodeLabels")),
        tolerations=_tolerations(spec.get("tolerations")),
    )


def _template(pod: ObjDict) -> ObjDict:
    """A pod as a Workload podSet template: Kueue sums its containers' (and sidecars')
    requests and matches its nodeSelector and tolerations against the flavors."""
    meta = pod["metadata"]
    return {
        "metadata": {"labels": dict(meta.get("labels") or {})},
        "spec": pod["spec"],
    }


def build_workload(
    job: build.JobRef,
    spec: TrainingJobSpec,
    config: OperatorConfig,
    generation: int,
    priority: int | None,
) -> ObjDict:
    """The Workload of a queued job: a podSet of `replicas` workers that Kueue may admit
    partly (minCount = minReplicas on an elastic job), and one for the rendezvous store."""
    queue = job.labels.get(c.LABEL_KUEUE_QUEUE, "")
    workers: ObjDict = {
        "name": PODSET_WORKERS,
        "count": spec.replicas,
        "template": _template(build.build_worker_pod(job, spec, 0, generation, config)),
    }
    if spec.min_replicas is not None and spec.min_replicas < spec.replicas:
        workers["minCount"] = spec.min_replicas
    store = {
        "name": PODSET_STORE,
        "count": 1,
        "template": _template(build.build_store_pod(job, spec)),
    }
    # A suspended job gives its quota back: Kueue evicts an inactive Workload.
    wl_spec: ObjDict = {"queueName": queue, "podSets": [workers, store], "active": not spec.suspend}
    name = spec.scheduling.priority_class_name
    if name is not None and priority is not None:
        wl_spec["priorityClassRef"] = {
            "group": "scheduling.k8s.io",
            "kind": "PriorityClass",
            "name": name,
        }
        wl_spec["priority"] = priority
    return {
        "apiVersion": c.KUEUE_API_VERSION,
        "kind": "Workload",
        "metadata": {
            "name": workload_name(job),
            "namespace": job.namespace,
            "labels": {
                c.LABEL_JOB: job.name,
                "app.kubernetes.io/managed-by": "trainop",
            },
            "ownerReferences": build.owner_references(job),
        },
        "spec": wl_spec,
    }


def stale_reason(wl: ObservedWorkload, desired: ObjDict, priority_class: str | None) -> str | None:
    """What of the job's spec the Workload no longer matches (queue, priority class,
    pod counts), or None. Only a Workload without quota is replaced: an admitted one is
    Kueue's promise and the job runs within it. The priority class is compared by name
    (`desired` carries it only when its value was looked up)."""
    spec = desired["spec"]
    if wl.queue_name != spec["queueName"]:
        return f"the queue changed to {spec['queueName']}"
    if wl.priority_class != priority_class:
        return "spec.scheduling.priorityClassName changed"
    for pod_set in spec["podSets"]:
        name = pod_set["name"]
        # Kueue's webhook drops minCount where partial admission is off: a Workload
        # without one is not out of date for it (else it would be replaced forever).
        held_min = wl.min_counts.get(name)
        if wl.counts.get(name) != pod_set["count"] or (
            held_min is not None and held_min != pod_set.get("minCount")
        ):
            return f"the {name} count changed to {pod_set['count']}"
    return None


def placement(wl: ObservedWorkload, pod_set: str, flavors: Mapping[str, Flavor]) -> Placement:
    """Node constraints of one podSet's admission (podset.FromAssignment in Kueue)."""
    selector: dict[str, str] = {}
    tolerations: list[ObjDict] = []
    assignment = wl.assignments.get(pod_set)
    for flavor_name in sorted(set((assignment.flavors if assignment else {}).values())):
        flavor = flavors.get(flavor_name)
        if flavor is not None:
            selector.update(flavor.node_labels)
            tolerations.extend(t for t in flavor.tolerations if t not in tolerations)
    update = wl.updates.get(pod_set, Placement())
    selector.update(update.node_selector)
    tolerations.extend(t for t in update.tolerations if t not in tolerations)
    return Placement(selector, tolerations, dict(update.labels), dict(update.annotations))


def admitted_workers(wl: ObservedWorkload, spec: TrainingJobSpec) -> int:
    """Workers the admission allows: the whole podSet, or fewer under partial admission."""
    assignment = wl.assignments.get(PODSET_WORKERS)
    count = assignment.count if assignment is not None else None
    return spec.replicas if count is None else min(count, spec.replicas)


def place_pod(pod: ObjDict, where: Placement) -> ObjDict:
    """The pod with its admission's node constraints added to its own."""
    if not (where.node_selector or where.tolerations or where.labels or where.annotations):
        return pod
    meta = {
        **pod["metadata"],
        "labels": {**pod["metadata"].get("labels", {}), **where.labels},
    }
    if where.annotations:
        meta["annotations"] = {**pod["metadata"].get("annotations", {}), **where.annotations}
    spec = dict(pod["spec"])
    if where.node_selector:
        spec["nodeSelector"] = {**spec.get("nodeSelector", {}), **where.node_selector}
    if where.tolerations:
        own = list(spec.get("tolerations", []))
        spec["tolerations"] = own + [t for t in where.tolerations if t not in own]
    return {**pod, "metadata": meta, "spec": spec}


def _condition(type_: str, status: bool, reason: str, message: str, now: datetime) -> ObjDict:
    return {
        "type": type_,
        "status": "True" if status else "False",
        "reason": reason,
        "message": message[:_MESSAGE_MAX],
        "lastTransitionTime": now.isoformat().replace("+00:00", "Z"),
    }


def _with(conditions: Sequence[ObjDict], new: Sequence[ObjDict]) -> list[ObjDict]:
    """conditions with `new` set by type; a condition whose status is unchanged keeps its
    transition time (metav1 semantics)."""
    out = [dict(x) for x in conditions]
    for cond in new:
        old = next((x for x in out if x.get("type") == cond["type"]), None)
        if old is None:
            out.append(cond)
            continue
        keep = old.get("status") == cond["status"]
        old.update({**cond, "lastTransitionTime": old["lastTransitionTime"]} if keep else cond)
    return out


def release_patch(wl: ObservedWorkload, now: datetime) -> ObjDict:
    """After an eviction, once the job's pods are gone: the quota goes back to the
    ClusterQueue and the Workload queues again (what Kueue's reconciler does for its own
    kinds through UnsetQuotaReservationWithCondition and SetRequeuedCondition). The
    resourceVersion makes it fail rather than overwrite a newer status."""
    evicted = wl.conditions.get(WL_EVICTED) or WorkloadCondition(True, "Evicted", "")
    updates = [
        _condition(
            WL_REQUEUED,
            evicted.reason in _REQUEUED_AFTER,
            evicted.reason or "Evicted",
            evicted.message,
            now,
        ),
        _condition(WL_QUOTA_RESERVED, False, "Pending", evicted.message, now),
    ]
    if wl.holds(WL_ADMITTED):
        updates.append(
            _condition(WL_ADMITTED, False, "NoReservation", "The workload has no reservation", now)
        )
    return {
        "metadata": {"resourceVersion": wl.resource_version},
        "status": {"admission": None, "conditions": _with(wl.raw_conditions, updates)},
    }


def pods_ready_patch(wl: ObservedWorkload, ready: bool, now: datetime) -> ObjDict | None:
    """PodsReady as Kueue's own reconciler writes it for the kinds it knows
    (generatePodsReadyCondition), when it changes: True once the job runs, False again
    while it recovers. Kueue's waitForPodsReady evicts an admitted Workload that does not
    turn True in time. None when there is nothing to write."""
    held = wl.conditions.get(WL_PODS_READY)
    if ready and (held is None or not held.status):
        recovering = held is not None and held.reason in ("WaitForRecovery", "Recovered")
        cond = _condition(
            WL_PODS_READY,
            True,
            "Recovered" if recovering else "Started",
            "All pods reached readiness and the workload is running",
            now,
        )
    elif not ready and held is not None and held.status:
        cond = _condition(
            WL_PODS_READY,
            False,
            "WaitForRecovery",
            "At least one pod has failed, waiting for recovery",
            now,
        )
    else:
        return None
    return {
        "metadata": {"resourceVersion": wl.resource_version},
        "status": {"conditions": _with(wl.raw_conditions, [cond])},
    }


def finish_patch(wl: ObservedWorkload, succeeded: bool, message: str, now: datetime) -> ObjDict:
    """The job ended: so does its Workload, and Kueue frees its quota."""
    reason = "Succeeded" if succeeded else "Failed"
    finished = _condition(WL_FINISHED, True, reason, message or f"the job {reason.lower()}", now)
    return {
        "metadata": {"resourceVersion": wl.resource_version},
        "status": {"conditions": _with(wl.raw_conditions, [finished])},
    }

"""Gang scheduling: one PodGroup per job, minMember = the workers that must start together.

Two PodGroup APIs exist and each scheduler finds a pod's group its own way:
- Volcano (scheduling.volcano.sh/v1beta1): the pod annotation scheduling.k8s.io/group-name;
- scheduler-plugins' coscheduling (scheduling.x-k8s.io/v1alpha1): the pod label
  scheduling.x-k8s.io/pod-group.
The rendezvous store is not a member: it needs no GPU and must not wait for the gang.

Purely computational.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from trainop.api import constants as c
from trainop.api.spec import PodGroupApi, TrainingJobSpec
from trainop.core import build

ObjDict = dict[str, Any]
APIS = (c.VOLCANO_API_VERSION, c.COSCHEDULING_API_VERSION)
VOLCANO_SCHEDULER = "volcano"


@dataclass(frozen=True)
class GangView:
    """What the reconciler saw: which PodGroup APIs are served, and the job's PodGroup
    under each (None when it has none)."""

    served: Mapping[str, bool] = field(default_factory=dict)
    pod_groups: Mapping[str, ObjDict | None] = field(default_factory=dict)


def choose_api(spec: TrainingJobSpec, served: Mapping[str, bool]) -> str | None:
    """The PodGroup API of a job that asks for a gang, or None when the cluster serves
    none that fits (the job then waits, saying so)."""
    gang = spec.scheduling.gang
    if gang is None:
        return None
    if gang.pod_group_api_version is not PodGroupApi.AUTO:
        wanted = gang.pod_group_api_version.value
        return wanted if served.get(wanted) else None
    available = [api for api in APIS if served.get(api)]
    if len(available) == 2:
        volcano = spec.scheduling.scheduler_name == VOLCANO_SCHEDULER
        return c.VOLCANO_API_VERSION if volcano else c.COSCHEDULING_API_VERSION
    return available[0] if available else None


def pod_group_name(job: build.JobRef) -> str:
    return job.name


def build_pod_group(job: build.JobRef, spec: TrainingJobSpec, api: str) -> ObjDict:
    """minMember = minReplicas (all replicas for a fixed-size job); minResources = what
    that many workers request of GPUs, so a queue-aware scheduler (Volcano) does not even
    start a gang its queue cannot hold."""
    gang = spec.scheduling.gang
    group: ObjDict = {"minMember": spec.min_nodes}
    res = spec.resources
    if res.gpus:
        group["minResources"] = {res.gpu_resource_name: str(res.gpus * spec.min_nodes)}
    if api == c.VOLCANO_API_VERSION:
        if gang is not None and gang.queue:
            group["queue"] = gang.queue
        if spec.scheduling.priority_class_name:
            group["priorityClassName"] = spec.scheduling.priority_class_name
    elif gang is not None and gang.schedule_timeout_seconds is not None:
        group["scheduleTimeoutSeconds"] = gang.schedule_timeout_seconds
    return {
        "apiVersion": api,
        "kind": "PodGroup",
        "metadata": {
            "name": pod_group_name(job),
            "namespace": job.namespace,
            "labels": {c.LABEL_JOB: job.name, "app.kubernetes.io/managed-by": "trainop"},
            "ownerReferences": build.owner_references(job),
        },
        "spec": group,
    }


def mark_member(pod: ObjDict, api: str, group: str) -> ObjDict:
    """The worker pod as a member of the PodGroup, the way its scheduler looks for it."""
    meta = dict(pod["metadata"])
    if api == c.VOLCANO_API_VERSION:
        meta["annotations"] = {**meta.get("annotations", {}), c.VOLCANO_GROUP_ANNOTATION: group}
    else:
        meta["labels"] = {**meta.get("labels", {}), c.COSCHEDULING_GROUP_LABEL: group}
    return {**pod, "metadata": meta}


def group_phase(pod_group: ObjDict | None) -> str | None:
    """The PodGroup's status.phase as its scheduler or controller wrote it (Pending,
    Inqueue, Running... for Volcano; Pending, Scheduling, Scheduled, Running for
    scheduler-plugins), or None before one wrote it."""
    phase = ((pod_group or {}).get("status") or {}).get("phase")
    return str(phase) if phase else None

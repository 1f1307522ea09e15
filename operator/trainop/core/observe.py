"""Parse API objects (plain dicts) into the small typed views the core decides on."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from trainop.api import constants as c


def parse_time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@dataclass(frozen=True, slots=True)
class Termination:
    exit_code: int
    reason: str  # kubelet's: Error, OOMKilled, Completed, ContainerStatusUnknown...
    message: str
    finished_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ObservedPod:
    name: str
    uid: str
    role: str
    slot: int | None
    job_generation: int
    phase: str  # Pending | Running | Succeeded | Failed | Unknown
    ready: bool = False
    deleting: bool = False
    deletion_time: datetime | None = None
    # When the delete was asked for: deletionTimestamp is that plus the grace period.
    delete_requested: datetime | None = None
    created: datetime | None = None  # metadata.creationTimestamp
    node_name: str | None = None
    status_reason: str | None = None  # pod.status.reason, e.g. Evicted
    status_message: str | None = None
    disruption_reason: str | None = None  # DisruptionTarget condition reason, when True
    unschedulable: str | None = None  # scheduler's message while PodScheduled=False
    # "Reason: container NAME: message" of the first container the kubelet cannot start.
    waiting: str | None = None
    trainer: Termination | None = None  # the trainer container's last termination
    progress: dict[str, Any] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.phase in ("Succeeded", "Failed")

    @property
    def active(self) -> bool:
        """Holds (or will hold) node resources: not finished and not being deleted."""
        return not self.finished and not self.deleting


def parse_pod(obj: dict[str, Any]) -> ObservedPod:
    meta = obj.get("metadata", {})
    labels = meta.get("labels") or {}
    status = obj.get("status") or {}
    conditions = {cond.get("type"): cond for cond in status.get("conditions") or []}

    slot_label = labels.get(c.LABEL_SLOT)
    slot = int(slot_label) if slot_label is not None and slot_label.isdigit() else None
    gen_label = labels.get(c.LABEL_JOB_GENERATION, "0")

    disruption = conditions.get("DisruptionTarget")
    scheduled = conditions.get("PodScheduled")
    unschedulable = None
    if scheduled and scheduled.get("status") == "False":
        unschedulable = (
            f"{scheduled.get('reason', 'Unschedulable')}: {scheduled.get('message', '')}"
        )

    waiting = _first_waiting(
        [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]
    )

    trainer = None
    for cs in status.get("containerStatuses") or []:
        if cs.get("name") != c.TRAINER_CONTAINER:
            continue
        state = cs.get("state") or {}
        term = state.get("terminated") or (cs.get("lastState") or {}).get("terminated")
        if term:
            trainer = Termination(
                exit_code=int(term.get("exitCode", 0)),
                reason=str(term.get("reason") or ""),
                message=str(term.get("message") or "").strip(),
                finished_at=parse_time(term.get("finishedAt")),
            )

    deletion_time = parse_time(meta.get("deletionTimestamp"))
    progress: dict[str, Any] = {}
    raw = (meta.get("annotations") or {}).get(c.ANNOTATION_PROGRESS)
    if raw:
        try:
            loaded = json.loads(raw)
        except ValueError:
            loaded = None  # a torn or foreign annotation is ignored, never fatal
        if isinstance(loaded, dict):
            progress = loaded

    return ObservedPod(
        name=meta.get("name", ""),
        uid=meta.get("uid", ""),
        role=labels.get(c.LABEL_ROLE, ""),
        slot=slot,
        job_generation=int(gen_label) if gen_label.isdigit() else 0,
        phase=status.get("phase") or "Pending",
        ready=(conditions.get("Ready") or {}).get("status") == "True",
        deleting=meta.get("deletionTimestamp") is not None,
        deletion_time=deletion_time,
        delete_requested=(
            deletion_time - timedelta(seconds=int(meta.get("deletionGracePeriodSeconds") or 0))
            if deletion_time is not None
            else None
        ),
        created=parse_time(meta.get("creationTimestamp")),
        node_name=(obj.get("spec") or {}).get("nodeName"),
        status_reason=status.get("reason"),
        status_message=status.get("message"),
        disruption_reason=(
            disruption.get("reason") if disruption and disruption.get("status") == "True" else None
        ),
        unschedulable=unschedulable,
        waiting=waiting,
        trainer=trainer,
        progress=progress,
    )


# Waiting reasons every container passes through on its way to running: not a problem.
_STARTING = frozenset({"ContainerCreating", "PodInitializing"})


def _first_waiting(statuses: list[dict[str, Any]]) -> str | None:
    """Why the kubelet cannot start a container (ImagePullBackOff, ErrImagePull,
    CreateContainerConfigError, InvalidImageName...). Init containers come first in
    the list: they block the rest, whose own reason is then only PodInitializing."""
    for cs in statuses:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        reason = str(waiting.get("reason") or "")
        if not reason or reason in _STARTING:
            continue
        message = str(waiting.get("message") or "").strip()
        where = f"container {cs.get('name', '?')}"
        return f"{reason}: {where}: {message}" if message else f"{reason}: {where}"
    return None


# Taint effects that keep a pod off a node; PreferNoSchedule only makes it less likely.
_HARD_EFFECTS = frozenset({"NoSchedule", "NoExecute"})


@dataclass(frozen=True)
class Taint:
    key: str
    value: str
    effect: str  # NoSchedule | NoExecute

    def __str__(self) -> str:  # as kubectl taint writes it
        return (
            f"{self.key}={self.value}:{self.effect}" if self.value else f"{self.key}:{self.effect}"
        )


@dataclass(frozen=True)
class NodeInfo:
    name: str
    ready: bool
    not_ready_since: datetime | None
    allocatable: dict[str, str]
    unschedulable: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    taints: tuple[Taint, ...] = ()  # only the effects that keep a pod off the node


def parse_node(obj: dict[str, Any]) -> NodeInfo:
    status = obj.get("status") or {}
    ready_cond = next(
        (cd for cd in status.get("conditions") or [] if cd.get("type") == "Ready"), None
    )
    ready = ready_cond is not None and ready_cond.get("status") == "True"
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    taints = tuple(
        Taint(str(t.get("key") or ""), str(t.get("value") or ""), str(t["effect"]))
        for t in spec.get("taints") or []
        if isinstance(t, dict) and t.get("effect") in _HARD_EFFECTS
    )
    return NodeInfo(
        name=meta.get("name", ""),
        ready=ready,
        not_ready_since=None
        if ready or ready_cond is None
        else parse_time(ready_cond.get("lastTransitionTime")),
        allocatable=dict(status.get("allocatable") or {}),
        unschedulable=bool(spec.get("unschedulable")),
        labels={str(k): str(v) for k, v in (meta.get("labels") or {}).items()},
        taints=taints,
    )


def quantity_to_int(value: str | None) -> int:
    """Extended resources such as nvidia.com/gpu are whole numbers."""
    if not value:
        return 0
    try:
        return int(value)
    except ValueError:
        return 0

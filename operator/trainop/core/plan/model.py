"""What a plan is made of: the observation, the plan, the draft it is built in, and the
names of the conditions and reasons it writes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from trainop.api import constants as c
from trainop.api.spec import TrainingJobSpec
from trainop.api.status import LastFailure, TrainingJobStatus
from trainop.core import build
from trainop.core.config import OperatorConfig
from trainop.core.gang import GangView
from trainop.core.kueue import Placement, QueueView
from trainop.core.observe import NodeInfo, ObservedPod

# Condition types. The phase conditions mirror status.phase for tools that only read conditions.
COND_SPEC_VALID = "SpecValid"


# False while the workers are being restarted for an edited spec; True once they all run it.
COND_SPEC_APPLIED = "SpecApplied"


COND_PODS_SCHEDULED = "PodsScheduled"


# Of a job labelled kueue.x-k8s.io/queue-name: True once Kueue admitted its Workload;
# False, with Kueue's own message, while it waits, or why it cannot be queued.
COND_QUEUE_ADMITTED = "QueueAdmitted"


# Of a job with spec.scheduling.gang: True once minMember workers run together; False
# with the PodGroup and scheduler it waits for, or the PodGroup API that is missing.
COND_GANG_SCHEDULED = "GangScheduled"


# True once some worker pod has waited to start longer than config.pending_timeout_seconds.
COND_PENDING_TOO_LONG = "PendingTooLong"


# True while some running worker has made no training step for longer than its hang bound
# (failurePolicy.hangSeconds, else max(10 x its step time, 120 s)); False once all step.
COND_STALLED = "Stalled"


# True while planning the job raises (a bug, or input no check foresaw): the job is left
# as it is, with the error in this condition and a Warning Event, never a silent loop.
COND_RECONCILE_ERROR = "ReconcileError"


# status.reason of a job held back because no ready node could take one of its pods.
REASON_NO_CAPACITY = "InsufficientGPUCapacity"


# Conditions about running workers, dropped while none should run (suspended, finished).
WORKER_CONDITIONS = (
    COND_PODS_SCHEDULED,
    COND_PENDING_TOO_LONG,
    COND_SPEC_APPLIED,
    COND_GANG_SCHEDULED,
    COND_STALLED,
)


PHASE_CONDITIONS = ("Running", "Restarting", "Suspended", "Succeeded", "Failed")


# handledFailures only needs the UIDs of failed pods not yet gone; this caps it regardless.
MAX_HANDLED = 512


PLANNING_RETRY_SECONDS = 60.0


# status.restartsByReason key of the in-place (torchrun) restarts.
IN_PLACE = "InPlace"


@dataclass(frozen=True)
class Observed:
    job: build.JobRef
    generation: int
    spec: TrainingJobSpec | None
    spec_error: str | None
    status: TrainingJobStatus
    pods: Sequence[ObservedPod]
    service_exists: bool
    # None when nodes cannot be observed (a namespaced install without node RBAC).
    nodes: Mapping[str, NodeInfo] | None = None
    missing_pvc: str | None = None
    # The API server's message when a dry-run create of the job's first pods was refused
    # (admission: an unknown PriorityClass, quota, pod validation the schema cannot express).
    admission_error: str | None = None
    # What the reconciler saw of Kueue; None for a job without the queue label.
    queue: QueueView | None = None
    # PodGroup APIs and the job's PodGroups; None for a job without spec.scheduling.gang.
    gang: GangView | None = None


@dataclass(frozen=True)
class WorkloadWrite:
    """A write to the job's Kueue Workload: create it, delete it (by UID), merge-patch its
    spec (active), or its status (the patch carries the resourceVersion it was computed
    from)."""

    verb: Literal["create", "delete", "patch", "status"]
    name: str
    uid: str
    body: dict[str, Any]


@dataclass(frozen=True)
class PodDelete:
    name: str
    uid: str
    # 0 for pods that are already dead or on a lost node; None keeps the pod's own grace
    # period so a live trainer can checkpoint.
    grace_seconds: int | None
    why: str


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Plan:
    status: TrainingJobStatus
    creates: tuple[dict[str, Any], ...] = ()
    deletes: tuple[PodDelete, ...] = ()
    events: tuple[Event, ...] = ()
    requeue_after: float | None = None
    delete_job: bool = False  # ttlSecondsAfterFinished elapsed
    # Every failure handled in this pass (status.lastFailure keeps only the last one).
    failures: tuple[LastFailure, ...] = ()
    # Objects the API server must accept (by dry run) before this plan is carried out;
    # when it refuses, the plan is made again with Observed.admission_error set.
    verify: tuple[dict[str, Any], ...] = ()
    # Workers not created because the nodes have no room for them: any node change may
    # let them start, so the job waits on node events.
    held_for_capacity: int = 0
    workload: tuple[WorkloadWrite, ...] = ()


@dataclass
class Draft:
    """The plan while it is being built; frozen into a Plan at the end."""

    status: TrainingJobStatus
    creates: list[dict[str, Any]] = field(default_factory=list)
    deletes: dict[str, PodDelete] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    waits: list[float] = field(default_factory=list)
    delete_job: bool = False
    failures: list[LastFailure] = field(default_factory=list)
    verify: list[dict[str, Any]] = field(default_factory=list)
    held_for_capacity: int = 0
    room: int | None = None  # workers the usable nodes can place, when checked
    workload: list[WorkloadWrite] = field(default_factory=list)

    def delete(self, pod: ObservedPod, grace: int | None, why: str) -> None:
        if pod.name not in self.deletes:
            self.deletes[pod.name] = PodDelete(pod.name, pod.uid, grace, why)

    def warn(self, reason: str, message: str) -> None:
        self.events.append(Event("Warning", reason, message))

    def note(self, reason: str, message: str) -> None:
        self.events.append(Event("Normal", reason, message))

    def freeze(self) -> Plan:
        positive = [w for w in self.waits if w >= 0]
        return Plan(
            status=self.status,
            creates=tuple(self.creates),
            deletes=tuple(self.deletes.values()),
            events=tuple(self.events),
            requeue_after=min(positive) if positive else None,
            delete_job=self.delete_job,
            failures=tuple(self.failures),
            verify=tuple(self.verify),
            held_for_capacity=self.held_for_capacity,
            workload=tuple(self.workload),
        )


@dataclass(frozen=True)
class Ctx:
    draft: Draft
    obs: Observed
    spec: TrainingJobSpec
    now: datetime
    config: OperatorConfig
    # (reason, message) while a queue keeps the job from running (not yet admitted,
    # evicted): it is stopped like a suspended job.
    hold: tuple[str, str] | None = None
    # Pod role -> node constraints of the queue's admission.
    placements: Mapping[str, Placement] = field(default_factory=dict)

    @property
    def workers(self) -> list[ObservedPod]:
        return [p for p in self.obs.pods if p.role == c.ROLE_WORKER]

    @property
    def current(self) -> list[ObservedPod]:
        gen = self.draft.status.job_generation
        return [p for p in self.workers if p.job_generation == gen]


def store_pod(pods: Sequence[ObservedPod]) -> ObservedPod | None:
    """The job's rendezvous store pod, if it has one now."""
    return next((p for p in pods if p.role == c.ROLE_STORE), None)

"""compute_plan: observed state + now -> what to create, delete, say and record.

Purely computational. Called once per reconcile with a fresh observation; it
converges from any starting point (operator restarted half-way, pods deleted
by hand), so running it twice on the same observation asks for the same thing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from trainop.api import constants as c
from trainop.api.spec import NNODES_KEY, Action, CleanPodPolicy, TrainingJobSpec
from trainop.api.status import LastFailure, Phase, Progress, TrainingJobStatus
from trainop.core import build, podsecurity
from trainop.core.conditions import get_condition, set_condition
from trainop.core.config import OperatorConfig
from trainop.core.failures import (
    Failure,
    backoff_seconds,
    classify,
    counts,
    decide_action,
    track_workers,
    vanished,
)
from trainop.core.observe import NodeInfo, ObservedPod, Taint, quantity_to_int
from trainop_runtime import contract as rc

# Condition types. The phase conditions mirror status.phase for tools that only read conditions.
COND_SPEC_VALID = "SpecValid"
# False while the workers are being restarted for an edited spec; True once they all run it.
COND_SPEC_APPLIED = "SpecApplied"
COND_PODS_SCHEDULED = "PodsScheduled"
# True once some worker pod has waited to start longer than config.pending_timeout_seconds.
COND_PENDING_TOO_LONG = "PendingTooLong"
# True while planning the job raises (a bug, or input no check foresaw): the job is left
# as it is, with the error in this condition and a Warning Event, never a silent loop.
COND_RECONCILE_ERROR = "ReconcileError"
# status.reason of a job held back because no ready node could take one of its pods.
REASON_NO_CAPACITY = "InsufficientGPUCapacity"
# Conditions about running workers, dropped while none should run (suspended, finished).
WORKER_CONDITIONS = (COND_PODS_SCHEDULED, COND_PENDING_TOO_LONG, COND_SPEC_APPLIED)
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
    suspend_job: bool = False  # patch spec.suspend=true (Kueue queue label on a new job)
    delete_job: bool = False  # ttlSecondsAfterFinished elapsed
    # Every failure handled in this pass (status.lastFailure keeps only the last one).
    failures: tuple[LastFailure, ...] = ()
    # Objects the API server must accept (by dry run) before this plan is carried out;
    # when it refuses, the plan is made again with Observed.admission_error set.
    verify: tuple[dict[str, Any], ...] = ()
    # Workers not created because the nodes have no room for them: any node change may
    # let them start, so the job waits on node events.
    held_for_capacity: int = 0


@dataclass
class _Draft:
    """The plan while it is being built; frozen into a Plan at the end."""

    status: TrainingJobStatus
    creates: list[dict[str, Any]] = field(default_factory=list)
    deletes: dict[str, PodDelete] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    waits: list[float] = field(default_factory=list)
    suspend_job: bool = False
    delete_job: bool = False
    failures: list[LastFailure] = field(default_factory=list)
    verify: list[dict[str, Any]] = field(default_factory=list)
    held_for_capacity: int = 0
    room: int | None = None  # workers the usable nodes can place, when checked

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
            suspend_job=self.suspend_job,
            delete_job=self.delete_job,
            failures=tuple(self.failures),
            verify=tuple(self.verify),
            held_for_capacity=self.held_for_capacity,
        )


def compute_plan(obs: Observed, now: datetime, config: OperatorConfig) -> Plan:
    """The reconcile pipeline. Each stage may settle the job and end the pipeline."""
    draft = _Draft(status=obs.status.model_copy(deep=True))
    draft.status.observed_generation = obs.generation
    draft.status.selector = build.worker_selector(obs.job.name)
    if obs.spec is None:
        problem = obs.spec_error or "invalid spec"
        _set_phase(draft, obs, now, Phase.PENDING, "InvalidSpec", problem)
        _spec_valid(draft, obs, now, "InvalidSpec", problem)
        return _finish(draft, obs, now)
    ctx = _Ctx(draft, obs, obs.spec, now, config)
    _release_lost(ctx)
    for stage in (
        _stage_finished,
        _stage_suspended,
        _stage_deadline,
        _stage_validate,
        _stage_failures,
        _stage_spec_changed,
        _stage_succeeded,
    ):
        if stage(ctx):
            return _finish(draft, obs, now)
    _stage_converge(ctx)
    return _finish(draft, obs, now)


@dataclass(frozen=True)
class _Ctx:
    draft: _Draft
    obs: Observed
    spec: TrainingJobSpec
    now: datetime
    config: OperatorConfig

    @property
    def workers(self) -> list[ObservedPod]:
        return [p for p in self.obs.pods if p.role == c.ROLE_WORKER]

    @property
    def current(self) -> list[ObservedPod]:
        gen = self.draft.status.job_generation
        return [p for p in self.workers if p.job_generation == gen]


def _stage_finished(ctx: _Ctx) -> bool:
    phase = ctx.obs.status.phase
    if phase is None or not phase.finished:
        return False
    _clean_up(ctx.draft, ctx.obs, ctx.spec)
    _counts(ctx.draft, ctx.obs, ctx.spec, desired=0)
    _ttl(ctx.draft, ctx.spec, ctx.now)
    return True


def _stage_suspended(ctx: _Ctx) -> bool:
    draft, obs, spec = ctx.draft, ctx.obs, ctx.spec
    suspended = spec.suspend
    if obs.status.phase is None and obs.job.labels.get(c.LABEL_KUEUE_QUEUE) and not suspended:
        # Kueue's own integrations suspend a queued job at creation and unsuspend it on
        # admission; trainop does the suspending half so Kueue can do the rest.
        draft.suspend_job = suspended = True
    if not suspended:
        return False
    for pod in obs.pods:
        if not pod.deleting:
            draft.delete(pod, None, "job suspended")
    draft.status.start_time = None
    draft.status.admission_time = None
    draft.status.retry_after = None
    _set_phase(draft, obs, ctx.now, Phase.SUSPENDED, "Suspended", "the job is suspended")
    _counts(draft, obs, spec, desired=0)
    return True


def _stage_validate(ctx: _Ctx) -> bool:
    if ctx.draft.status.start_time is not None or any(p.active for p in ctx.workers):
        # Started before: nodes or a PVC that went away later are not a spec problem;
        # the replacements' PodsScheduled condition says what is short.
        _spec_valid(ctx.draft, ctx.obs, ctx.now, "Valid", None)
        return False
    problem = _validate(ctx.spec, ctx.obs, ctx.config)
    if problem is None:
        _spec_valid(ctx.draft, ctx.obs, ctx.now, "Valid", None)
        return False
    _set_phase(ctx.draft, ctx.obs, ctx.now, Phase.PENDING, *problem)
    _spec_valid(ctx.draft, ctx.obs, ctx.now, *problem)
    _counts(ctx.draft, ctx.obs, ctx.spec, desired=ctx.spec.replicas)
    return True


def _stage_deadline(ctx: _Ctx) -> bool:
    st = ctx.draft.status
    if st.admission_time is None:
        # A status written before admissionTime existed started its clock at startTime.
        st.admission_time = st.start_time or ctx.now
    deadline = ctx.spec.run_policy.active_deadline_seconds
    start = st.admission_time
    if deadline is None:
        return False
    left = (start + timedelta(seconds=deadline) - ctx.now).total_seconds()
    if left > 0:
        ctx.draft.waits.append(left)
        return False
    _fail(
        ctx.draft,
        ctx.obs,
        ctx.spec,
        ctx.now,
        "DeadlineExceeded",
        f"the job was active longer than activeDeadlineSeconds={deadline} "
        f"(admitted at {start.isoformat()})",
    )
    return True


def _stage_failures(ctx: _Ctx) -> bool:
    return _account_failures(ctx.draft, ctx.obs, ctx.spec, ctx.workers, ctx.now, ctx.config)


def _stage_spec_changed(ctx: _Ctx) -> bool:
    """An edit to a field that shapes the workers restarts them all together: the old
    generation is stopped gracefully (SIGTERM, checkpoint) and the new one resumes from
    the checkpoint, so old and new workers never train side by side. Not counted against
    the budget. An edit the API server would refuse (a dry run of the new worker pod)
    changes nothing: the old workers keep training and SpecValid says why."""
    draft, obs, spec = ctx.draft, ctx.obs, ctx.spec
    st = draft.status
    wanted = spec.worker_fingerprint()
    if st.applied_spec == wanted:
        return False
    running = [p for p in ctx.current if not p.deleting and not p.finished]
    if not st.applied_spec or not running:
        st.applied_spec = wanted  # nothing runs the old spec: nothing to restart
        return False
    changed = _changed_fields(st.applied_spec, wanted)
    insecure = _pod_security(spec, obs, ctx.config)
    refusal = (
        f"the API server refuses the new worker pod: {obs.admission_error}"
        if obs.admission_error is not None
        else insecure
    )
    if refusal is not None:
        message = (
            f"the edit to {changed} is not applied: {refusal}; the workers keep running the "
            "previous spec. Fix the field it names"
        )
        old = get_condition(st.conditions, COND_SPEC_VALID)
        if old is None or (old.reason, old.message) != ("UpdateRejected", message):
            draft.warn("UpdateRejected", message)
        _spec_valid(draft, obs, ctx.now, "UpdateRejected", message)
        return False
    st.applied_spec = wanted
    st.job_generation += 1
    draft.verify.append(build.build_worker_pod(obs.job, spec, 0, st.job_generation, ctx.config))
    message = (
        f"{changed} changed: restarting all {len(running)} worker(s) together with the new "
        "spec (each checkpoints on SIGTERM; the restart is not counted against the budget)"
    )
    draft.note("SpecChanged", message)
    st.conditions = set_condition(
        st.conditions, COND_SPEC_APPLIED, False, "Restarting", message, ctx.now, obs.generation
    )
    return False


def _changed_fields(before: Mapping[str, str], after: Mapping[str, str]) -> str:
    names = []
    for key in sorted(after):
        if before.get(key) == after[key]:
            continue
        if key == NNODES_KEY:
            names.append(f"the worker range {key} (now {after[key]})")
        else:
            names.append(f"spec.{key}")
    return ", ".join(names) or "the spec"


def _stage_succeeded(ctx: _Ctx) -> bool:
    draft = ctx.draft
    for pod in ctx.workers:
        if pod.job_generation != draft.status.job_generation and not pod.deleting:
            draft.delete(pod, 0 if pod.finished else None, "replaced by a job restart")
    # A worker stopped on purpose (scaled away, deleted) may exit 0 on SIGTERM: not the end.
    done = [
        p
        for p in ctx.current
        if p.phase == "Succeeded" and not p.deleting and (p.slot or 0) < ctx.spec.replicas
    ]
    if not done:
        return False
    # torchrun agents exit 0 only once the whole worker group finished training.
    draft.status.completion_time = ctx.now
    _set_phase(
        draft,
        ctx.obs,
        ctx.now,
        Phase.SUCCEEDED,
        "Succeeded",
        f"worker {done[0].name} completed: training finished",
    )
    _counts(draft, ctx.obs, ctx.spec, desired=0)
    _clean_up(draft, ctx.obs, ctx.spec)
    _ttl(draft, ctx.spec, ctx.now)
    return True


def _stage_converge(ctx: _Ctx) -> None:
    draft, spec = ctx.draft, ctx.spec
    current = ctx.current
    scaled = [p for p in current if p.active and p.slot is not None and p.slot >= spec.replicas]
    for pod in scaled:
        draft.delete(pod, None, "scaled down")
    if scaled:
        draft.note("ScaledDown", f"removing {len(scaled)} worker(s) to reach {spec.replicas}")
    _ensure_children(draft, ctx.obs, spec, ctx.now, ctx.config)
    _counts(draft, ctx.obs, spec, desired=spec.replicas)
    _progress(draft, current)
    _running_phase(draft, ctx.obs, spec, current, ctx.now, ctx.config)
    _spec_applied(draft, ctx)


def _spec_applied(draft: _Draft, ctx: _Ctx) -> None:
    """SpecApplied turns True once no worker of an older spec is left and enough of the
    new one run; it exists only after a first edit restarted the workers."""
    st = draft.status
    cond = get_condition(st.conditions, COND_SPEC_APPLIED)
    if cond is None or cond.status == "True":
        return
    older = [p for p in ctx.workers if p.job_generation != st.job_generation and not p.finished]
    running = [p for p in ctx.current if p.phase == "Running" and p.name not in draft.deletes]
    if older or len(running) < ctx.spec.min_nodes:
        return
    st.conditions = set_condition(
        st.conditions,
        COND_SPEC_APPLIED,
        True,
        "Applied",
        f"every worker runs the current spec ({len(running)} running)",
        ctx.now,
        ctx.obs.generation,
    )


def _validate(
    spec: TrainingJobSpec, obs: Observed, config: OperatorConfig
) -> tuple[str, str] | None:
    """What the schema cannot know. Checked before anything is created for the job."""
    insecure = _pod_security(spec, obs, config)
    if insecure is not None:
        return ("PodSecurity", insecure)
    if config.capacity_check and spec.resources.gpus and obs.nodes is not None:
        short = _gpu_capacity(spec, obs, obs.nodes.values(), config)
        if short is not None:
            return (REASON_NO_CAPACITY, short)
    if obs.missing_pvc is not None:
        return (
            "CheckpointVolumeNotFound",
            f"PersistentVolumeClaim {obs.missing_pvc!r} of spec.checkpoint.volume does not exist "
            f"in namespace {obs.job.namespace}; create it or change spec.checkpoint.volume",
        )
    if obs.admission_error is not None:
        return (
            "AdmissionRejected",
            f"the API server refuses the job's pods: {obs.admission_error}; "
            "fix the spec field (or the missing object) it names",
        )
    return None


def _pod_security(spec: TrainingJobSpec, obs: Observed, config: OperatorConfig) -> str | None:
    """Why the job's worker pods break its namespace's Pod Security level, if they do."""
    ns = obs.job.namespace
    level = podsecurity.level_for(ns, config.pod_security, config.pod_security_namespaces)
    pod = build.build_worker_pod(obs.job, spec, 0, 0, config)["spec"]
    found = podsecurity.violations(pod, level, checkpoint_volume=c.CHECKPOINT_VOLUME)
    if not found:
        return None
    return (
        f"{'; '.join(found[:5])}: not allowed at Pod Security level {level.value} in "
        f"namespace {ns}. Change the field, or have a cluster admin allow more for this "
        f"namespace (helm value security.podSecurityNamespaces.{ns})"
    )


def _gpu_capacity(
    spec: TrainingJobSpec, obs: Observed, nodes: Iterable[NodeInfo], config: OperatorConfig
) -> str | None:
    """Why no ready node the job's pods may land on offers spec.resources.gpus, if none does.

    Placement is read from a built worker pod, so spec.podTemplate.spec overrides of
    nodeSelector and tolerations count as the scheduler will see them."""
    gpus, name = spec.resources.gpus, spec.resources.gpu_resource_name
    pod_spec = build.build_worker_pod(obs.job, spec, 0, 0, config)["spec"]
    selector = pod_spec.get("nodeSelector")
    selector = selector if isinstance(selector, dict) else {}
    tolerations = [t for t in pod_spec.get("tolerations") or [] if isinstance(t, dict)]
    usable = sorted((n for n in nodes if n.ready and not n.unschedulable), key=lambda n: n.name)
    kept_off = {n.name: _kept_off(n, selector, tolerations) for n in usable}
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


def _room(spec: TrainingJobSpec, obs: Observed, config: OperatorConfig) -> int | None:
    """How many of the job's workers the ready nodes they may use can hold at once, by
    GPUs (None when unchecked). An upper bound: other workloads' pods are not counted."""
    gpus = spec.resources.gpus
    if not (config.capacity_check and gpus and obs.nodes is not None):
        return None
    name = spec.resources.gpu_resource_name
    nodes = _usable(spec, obs, config)
    return sum(quantity_to_int(n.allocatable.get(name)) // gpus for n in nodes)


def _usable(spec: TrainingJobSpec, obs: Observed, config: OperatorConfig) -> list[NodeInfo]:
    """Ready, schedulable nodes the worker pods' nodeSelector and tolerations allow."""
    pod_spec = build.build_worker_pod(obs.job, spec, 0, 0, config)["spec"]
    selector = pod_spec.get("nodeSelector")
    selector = selector if isinstance(selector, dict) else {}
    tolerations = [t for t in pod_spec.get("tolerations") or [] if isinstance(t, dict)]
    nodes = (obs.nodes or {}).values()
    return [
        n
        for n in sorted(nodes, key=lambda n: n.name)
        if n.ready and not n.unschedulable and _kept_off(n, selector, tolerations) is None
    ]


def _kept_off(node: NodeInfo, selector: Mapping[str, Any], tolerations: list[Any]) -> str | None:
    """What keeps a pod with this nodeSelector and these tolerations off the node, if anything."""
    for key, want in sorted(selector.items()):
        have = node.labels.get(key)
        if have is None:
            return f"no label {key}={want}"
        if have != str(want):
            return f"label {key}={have}, not {want}"
    for taint in node.taints:
        if not any(_tolerates(t, taint) for t in tolerations):
            return f"taint {taint} is not tolerated"
    return None


def _tolerates(toleration: Mapping[str, Any], taint: Taint) -> bool:
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


def _node_lost(pod: ObservedPod, obs: Observed, now: datetime, config: OperatorConfig) -> bool:
    return not pod.finished and _on_lost_node(pod, obs, now, config)


def _on_lost_node(pod: ObservedPod, obs: Observed, now: datetime, config: OperatorConfig) -> bool:
    if obs.nodes is None or not pod.node_name:
        return False
    node = obs.nodes.get(pod.node_name)
    if node is None:
        return True
    if node.ready or node.not_ready_since is None:
        return False
    return (now - node.not_ready_since).total_seconds() >= config.node_lost_seconds


def _release_lost(ctx: _Ctx) -> None:
    """Force-delete pods a lost node will never confirm gone, in every stage: a pod
    stuck Terminating there would hold its name (and quota) forever. Live workers are
    also classified NodeLost by the failure stage; cleanPodPolicy None keeps live pods."""
    phase = ctx.obs.status.phase
    keep = phase is not None and phase.finished
    keep = keep and ctx.spec.run_policy.clean_pod_policy is CleanPodPolicy.NONE
    for pod in ctx.obs.pods:
        if not _on_lost_node(pod, ctx.obs, ctx.now, ctx.config):
            continue
        if pod.deleting or not (pod.finished or keep):
            ctx.draft.delete(pod, 0, f"node {pod.node_name} is lost")


def _account_failures(
    draft: _Draft,
    obs: Observed,
    spec: TrainingJobSpec,
    workers: list[ObservedPod],
    now: datetime,
    config: OperatorConfig,
) -> bool:
    """Count each failed pod once, apply the policy. True when the job has failed."""
    st = draft.status
    known = {w.pod_uid for w in st.live_workers}
    handled = [u for u in st.handled_failures if any(p.uid == u for p in workers)]
    tracked = track_workers(st.live_workers, workers, handled)
    store = _store(obs.pods)
    st.live_workers = tracked.live
    if _account_in_place(draft, obs, spec, now, tracked.new_restarts):
        return True
    for pod in sorted(workers, key=lambda p: (p.slot is None, p.slot, p.name)):
        lost = _node_lost(pod, obs, now, config)
        if obs.nodes is not None and pod.node_name and not lost and not pod.finished:
            node = obs.nodes.get(pod.node_name)
            if node is not None and node.not_ready_since is not None:
                left = config.node_lost_seconds - (now - node.not_ready_since).total_seconds()
                draft.waits.append(max(left, 0.5))
        # Preemption, API eviction and the taint manager delete their victim: it may
        # still be Running (checkpointing) while deleting, or Failed and deleting.
        disrupted = pod.deleting and pod.disruption_reason is not None
        if not (pod.phase == "Failed" or lost or disrupted):
            continue
        if pod.uid in handled:
            _dispose(draft, pod, "failure already handled")
            continue
        stale = pod.job_generation != st.job_generation
        ours = pod.deleting and not (lost or disrupted or pod.uid in known)
        if stale or ours or (pod.slot or 0) >= spec.replicas:
            # Pods we replaced, scaled away or deleted end as they end; not a new failure.
            _dispose(draft, pod, "finished after being replaced")
            continue
        handled.append(pod.uid)
        failure = classify(pod, node_lost=lost, store=store)
        action = _record_failure(draft, obs, spec, now, pod.name, pod.uid, failure)
        if action is None:
            st.handled_failures = handled[-MAX_HANDLED:]
            return True
        _dispose(draft, pod, f"replacing failed worker ({action.value})")
    st.handled_failures = handled[-MAX_HANDLED:]
    for gone in tracked.gone:
        if _record_failure(draft, obs, spec, now, gone.pod, gone.pod_uid, vanished(gone)) is None:
            return True
    return False


def _store(pods: Sequence[ObservedPod]) -> ObservedPod | None:
    """The job's rendezvous store pod, if it has one now."""
    return next((p for p in pods if p.role == c.ROLE_STORE), None)


def _dispose(draft: _Draft, pod: ObservedPod, why: str) -> None:
    # A victim still terminating keeps its grace period to checkpoint; a dead one goes now.
    if pod.finished or not pod.deleting:
        draft.delete(pod, 0, why)


def _record_failure(
    draft: _Draft,
    obs: Observed,
    spec: TrainingJobSpec,
    now: datetime,
    pod: str,
    uid: str,
    failure: Failure,
) -> Action | None:
    """Record one worker failure in status and apply the policy.
    The action taken, or None when the failure ended the job."""
    st = draft.status
    policy = spec.failure_policy
    action = decide_action(policy, failure)
    counted = counts(action)
    over_budget = counted and st.restarts + 1 > policy.backoff_limit
    code = f" with exit code {failure.exit_code}" if failure.exit_code is not None else ""
    detail = f"worker {pod} failed ({failure.reason.value}{code})"
    if failure.message:
        detail += f": {failure.message[:512]}"
    st.last_failure = LastFailure(
        pod=pod,
        pod_uid=uid,
        exit_code=failure.exit_code,
        reason=failure.reason.value,
        message=failure.message[:1024],
        action=Action.FAIL_JOB.value if over_budget else action.value,
        counted=counted and not over_budget,
        time=now,
    )
    draft.failures.append(st.last_failure)
    draft.warn("WorkerFailed", f"{detail}; action {st.last_failure.action}")
    ending = (
        ("BackoffLimitExceeded", f"the restart budget of {policy.backoff_limit} is used up")
        if over_budget
        else ("FailedByRule", "a failurePolicy rule says FailJob")
        if action is Action.FAIL_JOB
        else None
    )
    if ending is not None:
        _fail(draft, obs, spec, now, ending[0], f"{detail}; {ending[1]}")
        return None
    if counted:
        st.restarts += 1
        key = failure.reason.value
        st.restarts_by_reason[key] = st.restarts_by_reason.get(key, 0) + 1
        # The backoff grows with pod replacements; in-place restarts never waited on it.
        delay = backoff_seconds(policy, st.restarts - st.in_place_restarts)
        st.retry_after = now + timedelta(seconds=delay) if delay else None
    if action is Action.RESTART_JOB:
        st.job_generation += 1
        draft.note("RestartingJob", f"recreating every worker after {pod} failed")
    return action


def _account_in_place(
    draft: _Draft, obs: Observed, spec: TrainingJobSpec, now: datetime, new: dict[str, int]
) -> bool:
    """Fold the in-place restarts the agents reported into the one budget.
    True when they used it up (the job has failed)."""
    total = sum(new.values())
    if not total:
        return False
    st = draft.status
    limit = spec.failure_policy.backoff_limit
    st.restarts += total
    st.in_place_restarts += total
    st.restarts_by_reason[IN_PLACE] = st.restarts_by_reason.get(IN_PLACE, 0) + total
    where = ", ".join(f"{name} (+{n})" for name, n in sorted(new.items()))
    detail = f"{total} in-place worker-group restart(s) reported by {where}"
    draft.warn("InPlaceRestart", f"{detail}; restarts {st.restarts}/{limit}")
    if st.restarts <= limit:
        return False
    _fail(
        draft,
        obs,
        spec,
        now,
        "BackoffLimitExceeded",
        f"{detail}; the restart budget of {limit} is used up",
    )
    return True


def _ensure_children(
    draft: _Draft, obs: Observed, spec: TrainingJobSpec, now: datetime, config: OperatorConfig
) -> None:
    if obs.admission_error is not None:
        # A running job the API server refuses more pods for (e.g. quota): keep what runs and
        # leave the asking again to the reconciler's backoff.
        return
    st = draft.status
    if not obs.service_exists:
        draft.creates.append(build.build_service(obs.job, spec))
        # With the Service: before the first pod, so no pod is ever reachable by others.
        if config.network_policy:
            draft.creates.append(build.build_network_policy(obs.job, spec, config))
    store = _store(obs.pods)
    gone = draft.deletes.get(store.name) if store is not None else None
    # A store force-deleted from a lost node is gone before this plan creates.
    if store is None or (gone is not None and gone.grace_seconds == 0):
        draft.creates.append(build.build_store_pod(obs.job, spec))
    elif store.finished and not store.deleting:
        draft.delete(store, 0, "rendezvous store ended")

    if st.retry_after is not None and st.retry_after > now:
        draft.waits.append((st.retry_after - now).total_seconds())
        return
    st.retry_after = None
    taken = {p.name for p in obs.pods if p.name not in draft.deletes or p.deleting}
    # Pods we delete with grace 0 in this same plan are gone by the time we create.
    taken |= {d.name for d in draft.deletes.values() if d.grace_seconds is None}
    missing = [
        slot for slot in range(spec.replicas) if build.worker_name(obs.job.name, slot) not in taken
    ]
    room = _room(spec, obs, config)
    if room is not None:
        # Never more workers than the nodes can place, beyond minReplicas: a pod that
        # cannot be placed only loads the scheduler. The rest come as nodes free up.
        placed = spec.replicas - len(missing)
        allowed = max(0, max(spec.min_nodes, room) - placed)
        draft.room = room
        draft.held_for_capacity = max(0, len(missing) - allowed)
        missing = missing[:allowed]
    for slot in missing:
        draft.creates.append(build.build_worker_pod(obs.job, spec, slot, st.job_generation, config))
    if missing:
        draft.note(
            "CreatedWorkers", f"creating {len(missing)} worker pod(s): slots " + _ranges(missing)
        )


def _ranges(slots: list[int]) -> str:
    parts: list[str] = []
    start = prev = slots[0]
    for s in [*slots[1:], None]:
        if s is not None and s == prev + 1:
            prev = s
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if s is not None:
            start = prev = s
    return ",".join(parts)


def _counts(draft: _Draft, obs: Observed, spec: TrainingJobSpec, desired: int) -> None:
    st = draft.status
    current = [
        p
        for p in obs.pods
        if p.role == c.ROLE_WORKER
        and p.job_generation == st.job_generation
        and p.active
        and p.name not in draft.deletes
    ]
    st.replicas = len(current)
    st.ready_replicas = sum(1 for p in current if p.ready and p.phase == "Running")
    st.desired_replicas = desired
    st.workers = f"{st.ready_replicas}/{desired}"


def _running_phase(
    draft: _Draft,
    obs: Observed,
    spec: TrainingJobSpec,
    current: list[ObservedPod],
    now: datetime,
    config: OperatorConfig,
) -> None:
    st = draft.status
    live = [p for p in current if p.active and p.name not in draft.deletes]
    running = sum(1 for p in live if p.phase == "Running")
    waiting = [p for p in live if p.unschedulable]
    short = spec.replicas - len(live)
    if draft.held_for_capacity:
        msg = (
            f"{spec.replicas - draft.held_for_capacity} of {spec.replicas} worker(s) created: "
            "the ready nodes the pods may "
            f"use have room for {draft.room} worker(s) of {spec.resources.gpus} "
            f"{spec.resources.gpu_resource_name}; {draft.held_for_capacity} more are created "
            "as capacity appears"
        )
        st.conditions = set_condition(
            st.conditions,
            COND_PODS_SCHEDULED,
            False,
            "InsufficientCapacity",
            msg,
            now,
            obs.generation,
        )
    elif obs.admission_error is not None and short > 0:
        msg = f"{short} worker pod(s) are refused by the API server: {obs.admission_error}"
        st.conditions = set_condition(
            st.conditions, COND_PODS_SCHEDULED, False, "CreateRejected", msg, now, obs.generation
        )
    elif waiting:
        msg = f"{len(waiting)} worker(s) cannot be scheduled: {waiting[0].unschedulable}"
        st.conditions = set_condition(
            st.conditions, COND_PODS_SCHEDULED, False, "Unschedulable", msg, now, obs.generation
        )
    elif live:
        st.conditions = set_condition(
            st.conditions,
            COND_PODS_SCHEDULED,
            True,
            "Scheduled",
            "every worker pod is scheduled",
            now,
            obs.generation,
        )
    _pending_too_long(draft, obs, live, now, config.pending_timeout_seconds)
    if running >= spec.min_nodes:
        if st.start_time is None:
            st.start_time = now
        _set_phase(
            draft,
            obs,
            now,
            Phase.RUNNING,
            "Running",
            f"{running} worker(s) running (min {spec.min_nodes}, max {spec.max_nodes})",
        )
    elif st.start_time is not None or st.restarts or st.job_generation:
        why = f"{running} of at least {spec.min_nodes} worker(s) running"
        if st.retry_after is not None:
            why += f"; next replacement after {st.retry_after.isoformat()}"
        _set_phase(draft, obs, now, Phase.RESTARTING, "Restarting", why)
    elif waiting:
        _set_phase(
            draft,
            obs,
            now,
            Phase.PENDING,
            "Unschedulable",
            f"{len(waiting)} worker(s) cannot be scheduled: {waiting[0].unschedulable}",
        )
    else:
        _set_phase(
            draft,
            obs,
            now,
            Phase.PENDING,
            "Starting",
            f"{running} of at least {spec.min_nodes} worker(s) running",
        )


# The kubelet alternates these while it retries one failing pull.
_SAME_CAUSE = {"ErrImagePull": "ImagePullBackOff"}


def _pending_too_long(
    draft: _Draft, obs: Observed, live: list[ObservedPod], now: datetime, timeout: float
) -> None:
    """A worker that never starts wastes every GPU its peers hold: say so, with the
    kubelet's or the scheduler's reason, once it has waited longer than ``timeout`` seconds."""
    st = draft.status
    pending = [p for p in live if p.phase == "Pending"]
    old = get_condition(st.conditions, COND_PENDING_TOO_LONG)
    if not pending:
        st.pending_since = None
        if old is not None:
            st.conditions = set_condition(
                st.conditions,
                COND_PENDING_TOO_LONG,
                False,
                "Started",
                "no worker pod is waiting to start",
                now,
                obs.generation,
            )
        return
    if st.pending_since is None:
        st.pending_since = now
    waited = (now - st.pending_since).total_seconds()
    if waited < timeout:
        draft.waits.append(timeout - waited)
        return
    # The kubelet's reason is the more specific: a pod that is scheduled but cannot pull
    # its image, or one whose image is wrong wherever it lands, will never start anyway.
    first = next(
        (p for p in pending if p.waiting),
        next((p for p in pending if p.unschedulable), pending[0]),
    )
    said = first.waiting or first.unschedulable
    if said:
        reason, _, why = said.partition(": ")
        reason = _SAME_CAUSE.get(reason, reason)
    else:
        reason, why = "NotStarted", "scheduled, but its containers have not started"
    if old is not None and (old.status, old.reason, old.observed_generation) == (
        "True",
        reason,
        obs.generation,
    ):
        return  # the same cause, retried (the kubelet rewords it): no status write
    # No running clock in the text: the status must not change on every reconcile.
    message = (
        f"{len(pending)} worker pod(s) waiting to start for over "
        f"{int(timeout)}s; {first.name}: {why}"
    )
    if old is None or old.status != "True":
        draft.warn("PendingTooLong", message)
    st.conditions = set_condition(
        st.conditions, COND_PENDING_TOO_LONG, True, reason, message, now, obs.generation
    )


def _progress(draft: _Draft, current: list[ObservedPod]) -> None:
    reports = [p.progress for p in current if isinstance(p.progress.get(rc.P_STEP), int)]
    if not reports:
        return
    best = max(reports, key=lambda r: (r[rc.P_STEP], _num(r.get(rc.P_TIME)) or 0.0))
    step = int(best[rc.P_STEP])
    total = best.get(rc.P_TOTAL_STEPS)
    total = int(total) if isinstance(total, int) and total > 0 else None
    summary = f"{step}/{total} ({100 * step // total}%)" if total else f"step {step}"
    ckpt_step = best.get(rc.P_CHECKPOINT_STEP)
    draft.status.progress = Progress(
        step=step,
        total_steps=total,
        samples=best.get(rc.P_SAMPLES) if isinstance(best.get(rc.P_SAMPLES), int) else None,
        loss=_num(best.get(rc.P_LOSS)),
        samples_per_second=_num(best.get(rc.P_SAMPLES_PER_SECOND)),
        checkpoint_step=ckpt_step if isinstance(ckpt_step, int) else None,
        checkpoint_time=_unix(best.get(rc.P_CHECKPOINT_TIME)),
        update_time=_unix(best.get(rc.P_TIME)),
        summary=summary,
    )


def _num(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _unix(value: object) -> datetime | None:
    seconds = _num(value)
    return None if seconds is None else datetime.fromtimestamp(int(seconds), tz=UTC)


def _fail(
    draft: _Draft, obs: Observed, spec: TrainingJobSpec, now: datetime, reason: str, message: str
) -> None:
    draft.status.completion_time = now
    draft.status.retry_after = None
    _set_phase(draft, obs, now, Phase.FAILED, reason, message)
    _counts(draft, obs, spec, desired=0)
    _clean_up(draft, obs, spec)
    _ttl(draft, spec, now)


def _clean_up(draft: _Draft, obs: Observed, spec: TrainingJobSpec) -> None:
    """A finished job leaves no pod holding a GPU (unless cleanPodPolicy None says so)."""
    policy = spec.run_policy.clean_pod_policy
    if policy is CleanPodPolicy.NONE:
        return
    for pod in obs.pods:
        if pod.deleting:
            continue
        if policy is CleanPodPolicy.ALL or not pod.finished:
            draft.delete(pod, None, "job finished")


def _ttl(draft: _Draft, spec: TrainingJobSpec, now: datetime) -> None:
    ttl = spec.run_policy.ttl_seconds_after_finished
    done = draft.status.completion_time
    if ttl is None or done is None:
        return
    left = (done + timedelta(seconds=ttl) - now).total_seconds()
    if left <= 0:
        draft.delete_job = True
    else:
        draft.waits.append(left)


def _spec_valid(
    draft: _Draft, obs: Observed, now: datetime, reason: str, problem: str | None
) -> None:
    st = draft.status
    if problem is not None:
        st.conditions = set_condition(
            st.conditions, COND_SPEC_VALID, False, reason, problem, now, obs.generation
        )
    else:
        st.conditions = set_condition(
            st.conditions, COND_SPEC_VALID, True, reason, "the spec is valid", now, obs.generation
        )


def _set_phase(
    draft: _Draft, obs: Observed, now: datetime, phase: Phase, reason: str, message: str
) -> None:
    st = draft.status
    st.phase, st.reason, st.message = phase, reason, message
    for type_ in PHASE_CONDITIONS:
        on = type_ == phase.value
        if on or any(cd.type == type_ for cd in st.conditions):
            st.conditions = set_condition(
                st.conditions,
                type_,
                on,
                # An inactive phase condition only says which phase holds instead: the
                # why is the active one's (repeating it read as e.g. Suspended=False
                # because FailedByRule).
                reason if on else phase.value,
                message if on else f"the job is {phase.value}",
                now,
                obs.generation,
            )


def planning_failed(obs: Observed, now: datetime, error: str) -> Plan:
    """The plan of a job whose planning raised `error`: nothing created or deleted, only
    the ReconcileError condition (and a Warning Event the first time this error is seen).
    Other jobs are planned independently, so they are unaffected."""
    st = obs.status.model_copy(deep=True)
    old = get_condition(st.conditions, COND_RECONCILE_ERROR)
    message = f"trainop could not plan this job ({error}); nothing was changed"
    st.conditions = set_condition(
        st.conditions, COND_RECONCILE_ERROR, True, "PlanningFailed", message, now, obs.generation
    )
    fresh = old is None or (old.status, old.message) != ("True", message)
    events = (Event("Warning", COND_RECONCILE_ERROR, message),) if fresh else ()
    # A spec edit wakes the job at once; meanwhile it is tried again now and then.
    return Plan(status=st, events=events, requeue_after=PLANNING_RETRY_SECONDS)


def _finish(draft: _Draft, obs: Observed, now: datetime) -> Plan:
    st, before = draft.status, obs.status
    failed = get_condition(st.conditions, COND_RECONCILE_ERROR)
    if failed is not None and failed.status == "True":
        st.conditions = set_condition(
            st.conditions,
            COND_RECONCILE_ERROR,
            False,
            "Planned",
            "the job was planned without error",
            now,
            obs.generation,
        )
    if obs.spec is not None:
        # Derived once here from the count every stage may have changed (printer column).
        st.restarts_summary = f"{st.restarts}/{obs.spec.failure_policy.backoff_limit}"
    if st.phase in (Phase.SUSPENDED, Phase.SUCCEEDED, Phase.FAILED):
        st.live_workers = []
        st.pending_since = None
        # About workers that no longer run: they would read as current (Scheduled=True
        # on a finished job). They come back with the workers.
        st.conditions = [c for c in st.conditions if c.type not in WORKER_CONDITIONS]
    else:
        # Pods this plan deletes or has written off are no longer followed, so their
        # end is never taken for a hand deletion nor their restarts counted again.
        dropped = {d.uid for d in draft.deletes.values()} | set(st.handled_failures)
        seen = {p.uid for p in obs.pods}
        st.live_workers = [
            w for w in st.live_workers if w.pod_uid in seen and w.pod_uid not in dropped
        ]
    if st.phase != before.phase and st.phase is not None:
        kind = "Warning" if st.phase in (Phase.FAILED, Phase.RESTARTING) else "Normal"
        if st.phase is Phase.PENDING and st.reason not in ("Starting", None):
            kind = "Warning"
        draft.events.append(Event(kind, f"Job{st.phase.value}", st.message or ""))
    elif st.phase is Phase.PENDING and st.reason not in (before.reason, "Starting"):
        draft.warn(st.reason or "Pending", st.message or "")
    return draft.freeze()

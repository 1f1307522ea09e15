"""compute_plan: observed state + now -> what to create, delete, say and record.

Purely computational. Called once per reconcile with a fresh observation; it
converges from any starting point (operator restarted half-way, pods deleted
by hand), so running it twice on the same observation asks for the same thing.
Each stage may settle the job and end the pipeline; the policies live in the
sibling modules.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from trainop.api import constants as c
from trainop.api.status import Phase
from trainop.core import build, kueue
from trainop.core.conditions import get_condition, set_condition
from trainop.core.config import OperatorConfig
from trainop.core.plan.checks import startup_problem
from trainop.core.plan.children import (
    clean_up,
    ensure_children,
    schedule_ttl,
    set_counts,
)
from trainop.core.plan.gang import ensure_pod_group, gang_status, mark_members, stage_gang_api
from trainop.core.plan.hang import stage_hang
from trainop.core.plan.model import (
    COND_RECONCILE_ERROR,
    PLANNING_RETRY_SECONDS,
    WORKER_CONDITIONS,
    Ctx,
    Draft,
    Event,
    Observed,
    Plan,
)
from trainop.core.plan.phases import (
    fail_job,
    record_progress,
    running_phase,
    set_phase,
    spec_valid,
)
from trainop.core.plan.queue import finish_workload, stage_queue
from trainop.core.plan.restarts import (
    account_failures,
    release_lost,
)
from trainop.core.plan.updates import spec_applied, stage_spec_changed
from trainop.core.plan.usage import record_usage


def compute_plan(obs: Observed, now: datetime, config: OperatorConfig) -> Plan:
    """The reconcile pipeline. Each stage may settle the job and end the pipeline."""
    draft = Draft(status=obs.status.model_copy(deep=True))
    draft.status.observed_generation = obs.generation
    draft.status.selector = build.worker_selector(obs.job.name)
    if obs.spec is None:
        problem = obs.spec_error or "invalid spec"
        set_phase(draft, obs, now, Phase.PENDING, "InvalidSpec", problem)
        spec_valid(draft, obs, now, "InvalidSpec", problem)
        return _finish(draft, obs, now)
    ctx = Ctx(draft, obs, obs.spec, now, config)
    # Whatever the phase: the last reports of a finishing job's pods count too.
    record_usage(draft, ctx.workers)
    release_lost(ctx)
    if _stage_finished(ctx):
        return _finish(draft, obs, now)
    # From here on the job is what its queue lets run (all of it when it has none).
    ctx = stage_queue(ctx)
    for stage in (
        _stage_suspended,
        _stage_deadline,
        _stage_validate,
        stage_gang_api,
        _stage_failures,
        stage_spec_changed,
        _stage_succeeded,
        stage_hang,
    ):
        if stage(ctx):
            break
    else:
        _stage_converge(ctx)
    _place(ctx)
    return _finish(draft, obs, now)


def _stage_finished(ctx: Ctx) -> bool:
    phase = ctx.obs.status.phase
    if phase is None or not phase.finished:
        return False
    clean_up(ctx.draft, ctx.obs, ctx.spec)
    set_counts(ctx.draft, ctx.obs, ctx.spec, desired=0)
    schedule_ttl(ctx.draft, ctx.spec, ctx.now)
    finish_workload(ctx)
    return True


def _stage_suspended(ctx: Ctx) -> bool:
    """Suspended by spec.suspend or held by its queue: every pod stops gracefully (SIGTERM,
    checkpoint) and nothing is counted against the restart budget."""
    draft, obs, spec = ctx.draft, ctx.obs, ctx.spec
    if spec.suspend:
        reason, message = "Suspended", "the job is suspended"
    elif ctx.hold is not None:
        reason, message = ctx.hold
    else:
        return False
    for pod in obs.pods:
        if not pod.deleting:
            draft.delete(pod, None, message if ctx.hold else "job suspended")
    draft.status.start_time = None
    draft.status.admission_time = None
    draft.status.retry_after = None
    set_phase(draft, obs, ctx.now, Phase.SUSPENDED, reason, message)
    set_counts(draft, obs, spec, desired=0)
    return True


def _place(ctx: Ctx) -> None:
    """Pods created under a queue's admission go where it admitted them (its flavors'
    nodeLabels and tolerations), beside the job's own constraints; a gang's workers are
    marked as members of its PodGroup."""
    draft = ctx.draft
    draft.creates = mark_members(ctx, draft.creates)
    draft.verify = mark_members(ctx, draft.verify)
    if not ctx.placements:
        return

    def placed(obj: dict[str, Any]) -> dict[str, Any]:
        if obj.get("kind") != "Pod":
            return obj
        role = obj["metadata"]["labels"].get(c.LABEL_ROLE)
        where = ctx.placements.get(str(role))
        return kueue.place_pod(obj, where) if where is not None else obj

    draft.creates = [placed(o) for o in draft.creates]
    draft.verify = [placed(o) for o in draft.verify]


def _stage_validate(ctx: Ctx) -> bool:
    if ctx.draft.status.start_time is not None or any(p.active for p in ctx.workers):
        # Started before: nodes or a PVC that went away later are not a spec problem;
        # the replacements' PodsScheduled condition says what is short.
        spec_valid(ctx.draft, ctx.obs, ctx.now, "Valid", None)
        return False
    problem = startup_problem(ctx.spec, ctx.obs, ctx.config)
    if problem is None:
        spec_valid(ctx.draft, ctx.obs, ctx.now, "Valid", None)
        return False
    set_phase(ctx.draft, ctx.obs, ctx.now, Phase.PENDING, *problem)
    spec_valid(ctx.draft, ctx.obs, ctx.now, *problem)
    set_counts(ctx.draft, ctx.obs, ctx.spec, desired=ctx.spec.replicas)
    return True


def _stage_deadline(ctx: Ctx) -> bool:
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
    fail_job(
        ctx.draft,
        ctx.obs,
        ctx.spec,
        ctx.now,
        "DeadlineExceeded",
        f"the job was active longer than activeDeadlineSeconds={deadline} "
        f"(admitted at {start.isoformat()})",
    )
    return True


def _stage_failures(ctx: Ctx) -> bool:
    return account_failures(ctx.draft, ctx.obs, ctx.spec, ctx.workers, ctx.now, ctx.config)


def _stage_succeeded(ctx: Ctx) -> bool:
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
    set_phase(
        draft,
        ctx.obs,
        ctx.now,
        Phase.SUCCEEDED,
        "Succeeded",
        f"worker {done[0].name} completed: training finished",
    )
    set_counts(draft, ctx.obs, ctx.spec, desired=0)
    clean_up(draft, ctx.obs, ctx.spec)
    schedule_ttl(draft, ctx.spec, ctx.now)
    return True


def _stage_converge(ctx: Ctx) -> None:
    draft, spec = ctx.draft, ctx.spec
    current = ctx.current
    scaled = [p for p in current if p.active and p.slot is not None and p.slot >= spec.replicas]
    for pod in scaled:
        draft.delete(pod, None, "scaled down")
    if scaled:
        draft.note("ScaledDown", f"removing {len(scaled)} worker(s) to reach {spec.replicas}")
    ensure_children(draft, ctx.obs, spec, ctx.now, ctx.config)
    ensure_pod_group(ctx)
    set_counts(draft, ctx.obs, spec, desired=spec.replicas)
    record_progress(draft, current)
    running_phase(draft, ctx.obs, spec, current, ctx.now, ctx.config)
    spec_applied(draft, ctx)
    gang_status(ctx)


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


def _finish(draft: Draft, obs: Observed, now: datetime) -> Plan:
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

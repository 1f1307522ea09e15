"""The job's phase and conditions as users read them (kubectl get tj), pending too long,
and training progress from the pods' reports.
"""

from __future__ import annotations

from datetime import UTC, datetime

from trainop.api.spec import TrainingJobSpec
from trainop.api.status import Phase, Progress
from trainop.core.conditions import get_condition, set_condition
from trainop.core.config import OperatorConfig
from trainop.core.observe import ObservedPod
from trainop.core.plan.children import (
    clean_up,
    schedule_ttl,
    set_counts,
)
from trainop.core.plan.model import (
    COND_PENDING_TOO_LONG,
    COND_PODS_SCHEDULED,
    COND_SPEC_VALID,
    PHASE_CONDITIONS,
    Draft,
    Observed,
)
from trainop_runtime import contract as rc


def running_phase(
    draft: Draft,
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
    pending_too_long(draft, obs, live, now, config.pending_timeout_seconds)
    if running >= spec.min_nodes:
        if st.start_time is None:
            st.start_time = now
        set_phase(
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
        set_phase(draft, obs, now, Phase.RESTARTING, "Restarting", why)
    elif waiting:
        set_phase(
            draft,
            obs,
            now,
            Phase.PENDING,
            "Unschedulable",
            f"{len(waiting)} worker(s) cannot be scheduled: {waiting[0].unschedulable}",
        )
    else:
        set_phase(
            draft,
            obs,
            now,
            Phase.PENDING,
            "Starting",
            f"{running} of at least {spec.min_nodes} worker(s) running",
        )


# The kubelet alternates these while it retries one failing pull.
SAME_CAUSE = {"ErrImagePull": "ImagePullBackOff"}


def pending_too_long(
    draft: Draft, obs: Observed, live: list[ObservedPod], now: datetime, timeout: float
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
        reason = SAME_CAUSE.get(reason, reason)
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


def record_progress(draft: Draft, current: list[ObservedPod]) -> None:
    reports = [p.progress for p in current if isinstance(p.progress.get(rc.P_STEP), int)]
    if not reports:
        return
    best = max(reports, key=lambda r: (r[rc.P_STEP], as_number(r.get(rc.P_TIME)) or 0.0))
    step = int(best[rc.P_STEP])
    total = best.get(rc.P_TOTAL_STEPS)
    total = int(total) if isinstance(total, int) and total > 0 else None
    summary = f"{step}/{total} ({100 * step // total}%)" if total else f"step {step}"
    # Only the writer saves: the others report the step they resumed from, which may be
    # the most advanced report and would flip the shown checkpoint back to an older one.
    saved = [r for r in reports if isinstance(r.get(rc.P_CHECKPOINT_STEP), int)]
    newest = max(saved, key=lambda r: int(r[rc.P_CHECKPOINT_STEP]), default={})
    ckpt_step = newest.get(rc.P_CHECKPOINT_STEP)
    draft.status.progress = Progress(
        step=step,
        total_steps=total,
        samples=best.get(rc.P_SAMPLES) if isinstance(best.get(rc.P_SAMPLES), int) else None,
        loss=as_number(best.get(rc.P_LOSS)),
        samples_per_second=as_number(best.get(rc.P_SAMPLES_PER_SECOND)),
        checkpoint_step=ckpt_step if isinstance(ckpt_step, int) else None,
        checkpoint_time=as_time(newest.get(rc.P_CHECKPOINT_TIME)),
        update_time=as_time(best.get(rc.P_TIME)),
        summary=summary,
    )


def as_number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def as_time(value: object) -> datetime | None:
    seconds = as_number(value)
    return None if seconds is None else datetime.fromtimestamp(int(seconds), tz=UTC)


def fail_job(
    draft: Draft, obs: Observed, spec: TrainingJobSpec, now: datetime, reason: str, message: str
) -> None:
    draft.status.completion_time = now
    draft.status.retry_after = None
    set_phase(draft, obs, now, Phase.FAILED, reason, message)
    set_counts(draft, obs, spec, desired=0)
    clean_up(draft, obs, spec)
    schedule_ttl(draft, spec, now)


def spec_valid(
    draft: Draft, obs: Observed, now: datetime, reason: str, problem: str | None
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


def set_phase(
    draft: Draft, obs: Observed, now: datetime, phase: Phase, reason: str, message: str
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

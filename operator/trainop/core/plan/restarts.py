"""Worker failures against the one restart budget: each failed, lost or vanished pod
counted once, in-place restarts folded in, lost nodes' pods released.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from trainop.api.spec import Action, CleanPodPolicy, TrainingJobSpec
from trainop.api.status import LastFailure
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
from trainop.core.observe import ObservedPod
from trainop.core.plan.model import (
    IN_PLACE,
    MAX_HANDLED,
    Ctx,
    Draft,
    Observed,
    store_pod,
)
from trainop.core.plan.phases import fail_job


def node_lost(pod: ObservedPod, obs: Observed, now: datetime, config: OperatorConfig) -> bool:
    return not pod.finished and on_lost_node(pod, obs, now, config)


def on_lost_node(pod: ObservedPod, obs: Observed, now: datetime, config: OperatorConfig) -> bool:
    if obs.nodes is None or not pod.node_name:
        return False
    node = obs.nodes.get(pod.node_name)
    if node is None:
        return True
    if node.ready or node.not_ready_since is None:
        return False
    return (now - node.not_ready_since).total_seconds() >= config.node_lost_seconds


def release_lost(ctx: Ctx) -> None:
    """Force-delete pods a lost node will never confirm gone, in every stage: a pod
    stuck Terminating there would hold its name (and quota) forever. Live workers are
    also classified NodeLost by the failure stage; cleanPodPolicy None keeps live pods."""
    phase = ctx.obs.status.phase
    keep = phase is not None and phase.finished
    keep = keep and ctx.spec.run_policy.clean_pod_policy is CleanPodPolicy.NONE
    for pod in ctx.obs.pods:
        if not on_lost_node(pod, ctx.obs, ctx.now, ctx.config):
            continue
        if pod.deleting or not (pod.finished or keep):
            ctx.draft.delete(pod, 0, f"node {pod.node_name} is lost")


def account_failures(
    draft: Draft,
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
    store = store_pod(obs.pods)
    st.live_workers = tracked.live
    if account_in_place(draft, obs, spec, now, tracked.new_restarts):
        return True
    for pod in sorted(workers, key=lambda p: (p.slot is None, p.slot, p.name)):
        lost = node_lost(pod, obs, now, config)
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
            dispose(draft, pod, "failure already handled")
            continue
        stale = pod.job_generation != st.job_generation
        ours = pod.deleting and not (lost or disrupted or pod.uid in known)
        if stale or ours or (pod.slot or 0) >= spec.replicas:
            # Pods we replaced, scaled away or deleted end as they end; not a new failure.
            dispose(draft, pod, "finished after being replaced")
            continue
        handled.append(pod.uid)
        failure = classify(pod, node_lost=lost, store=store)
        action = record_failure(draft, obs, spec, now, pod.name, pod.uid, failure)
        if action is None:
            st.handled_failures = handled[-MAX_HANDLED:]
            return True
        dispose(draft, pod, f"replacing failed worker ({action.value})")
    st.handled_failures = handled[-MAX_HANDLED:]
    for gone in tracked.gone:
        if record_failure(draft, obs, spec, now, gone.pod, gone.pod_uid, vanished(gone)) is None:
            return True
    return False


def dispose(draft: Draft, pod: ObservedPod, why: str) -> None:
    # A victim still terminating keeps its grace period to checkpoint; a dead one goes now.
    if pod.finished or not pod.deleting:
        draft.delete(pod, 0, why)


def record_failure(
    draft: Draft,
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
        fail_job(draft, obs, spec, now, ending[0], f"{detail}; {ending[1]}")
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


def account_in_place(
    draft: Draft, obs: Observed, spec: TrainingJobSpec, now: datetime, new: dict[str, int]
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
    fail_job(
        draft,
        obs,
        spec,
        now,
        "BackoffLimitExceeded",
        f"{detail}; the restart budget of {limit} is used up",
    )
    return True

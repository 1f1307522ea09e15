"""A job labelled kueue.x-k8s.io/queue-name runs only while Kueue admits its Workload.

Kueue treats TrainingJob as an external framework (core/kueue.py), so this is the job
controller's half: create the Workload, wait for its admission (saying with Kueue's own
words why it waits), run the admitted count on the admitted flavors, stop gracefully and
give the quota back when Kueue evicts it, and finish the Workload with the job.
Every waiting state names who it waits for in the QueueAdmitted condition.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from trainop.api import constants as c
from trainop.api.status import Phase
from trainop.core import kueue
from trainop.core.conditions import get_condition, set_condition
from trainop.core.plan.model import COND_QUEUE_ADMITTED, Ctx, WorkloadWrite

# Reasons of the QueueAdmitted condition (and of status.reason while held).
QUEUED = "QueuedInKueue"
EVICTED = "EvictedByKueue"
NOT_INSTALLED = "KueueNotInstalled"
NO_PRIORITY_CLASS = "PriorityClassNotFound"
WORKLOAD_FINISHED = "WorkloadFinished"
ADMITTED = "Admitted"
_WARNINGS = (NOT_INSTALLED, NO_PRIORITY_CLASS, WORKLOAD_FINISHED)
NOT_SERVED_RECHECK_SECONDS = 30.0


def stage_queue(ctx: Ctx) -> Ctx:
    """The job as its queue lets it run: held (ctx.hold), or admitted with the admitted
    worker count and the flavors' placement. A job without the label is left as it is."""
    queue = ctx.obs.job.labels.get(c.LABEL_KUEUE_QUEUE)
    if not queue:
        _unqueued(ctx)
        return ctx
    obs, draft = ctx.obs, ctx.draft
    view = obs.queue or kueue.QueueView(served=False)
    if not view.served:
        # Kueue may be installed while the job waits: look again now and then.
        ctx.draft.waits.append(NOT_SERVED_RECHECK_SECONDS)
        return _hold(
            ctx,
            NOT_INSTALLED,
            f"the job is labelled {c.LABEL_KUEUE_QUEUE}={queue}, but this cluster does not "
            f"serve Kueue's Workload API ({c.KUEUE_API_VERSION}): install Kueue with "
            f'integrations.externalFrameworks: ["{c.KUEUE_FRAMEWORK}"], or remove the label '
            "to run the job without a queue",
        )
    wl = view.workload
    desired = kueue.build_workload(
        obs.job, ctx.spec, ctx.config, draft.status.job_generation, view.priority
    )
    if wl is None:
        return _create(ctx, view, desired, queue)
    return _follow(ctx, wl, view, desired, queue)


def _follow(
    ctx: Ctx,
    wl: kueue.ObservedWorkload,
    view: kueue.QueueView,
    desired: dict[str, Any],
    queue: str,
) -> Ctx:
    """The job as its existing Workload says."""
    name = wl.name
    active = not ctx.spec.suspend
    if wl.active != active:
        # spec.suspend deactivates the Workload (Kueue evicts it and the quota is freed
        # once the pods are gone); resuming queues it again.
        ctx.draft.workload.append(
            WorkloadWrite("patch", name, wl.uid, {"spec": {"active": active}})
        )
    if wl.finished:
        done = wl.conditions[kueue.WL_FINISHED]
        return _hold(
            ctx,
            WORKLOAD_FINISHED,
            f"Kueue's Workload {name} is finished ({done.reason}: {done.message}) but the "
            "job is not; delete the Workload and trainop queues the job again",
        )
    if wl.evicted:
        return _evicted(ctx, wl)
    if not wl.admitted:
        return _waiting(ctx, wl, desired, queue)
    return _admitted(ctx, wl, view)


def _create(ctx: Ctx, view: kueue.QueueView, desired: dict[str, Any], queue: str) -> Ctx:
    priority_class = ctx.spec.scheduling.priority_class_name
    if priority_class is not None and view.priority_class_missing:
        return _hold(
            ctx,
            NO_PRIORITY_CLASS,
            f"PriorityClass {priority_class} (spec.scheduling.priorityClassName) does not "
            "exist: Kueue orders the queue by its value. Create it or change the field",
        )
    name = desired["metadata"]["name"]
    ctx.draft.workload.append(WorkloadWrite("create", name, "", desired))
    return _hold(ctx, QUEUED, f"queued in Kueue (LocalQueue {queue}): Workload {name} created")


def _waiting(ctx: Ctx, wl: kueue.ObservedWorkload, desired: dict[str, Any], queue: str) -> Ctx:
    stale = kueue.stale_reason(wl, desired, ctx.spec.scheduling.priority_class_name)
    if stale is not None and not wl.reserved:
        # Queued under an older spec: a fresh Workload, so Kueue admits what will run.
        ctx.draft.workload.append(WorkloadWrite("delete", wl.name, wl.uid, {}))
        return _hold(
            ctx,
            QUEUED,
            f"queued in Kueue (LocalQueue {queue}): Workload {wl.name} is replaced ({stale})",
        )
    reserved = wl.conditions.get(kueue.WL_QUOTA_RESERVED)
    if wl.reserved:
        why = f"quota reserved in ClusterQueue {wl.cluster_queue}; waiting for its admission checks"
    elif reserved is not None and reserved.message:
        why = reserved.message  # Kueue's own words, e.g. insufficient unused quota
    else:
        why = f"waiting for Kueue to admit Workload {wl.name}"
    return _hold(ctx, QUEUED, f"queued in Kueue (LocalQueue {queue}): {why}")


def _evicted(ctx: Ctx, wl: kueue.ObservedWorkload) -> Ctx:
    # Kueue's reconciler gives the quota back only once the job no longer runs: the
    # GPUs are free when the next Workload's pods arrive.
    alive = [p for p in ctx.obs.pods if not p.finished]
    if not alive and wl.reserved:
        ctx.draft.workload.append(
            WorkloadWrite("status", wl.name, wl.uid, kueue.release_patch(wl, ctx.now))
        )
    ev = wl.conditions[kueue.WL_EVICTED]
    return _hold(
        ctx,
        EVICTED,
        f"evicted by Kueue ({ev.reason}: {ev.message}); the workers stop gracefully "
        "(checkpoint on SIGTERM), not counted against the restart budget, and resume from "
        "the checkpoint once Kueue admits the job again",
    )


def _admitted(ctx: Ctx, wl: kueue.ObservedWorkload, view: kueue.QueueView) -> Ctx:
    spec = ctx.spec
    count = kueue.admitted_workers(wl, spec)
    assignment = wl.assignments.get(kueue.PODSET_WORKERS)
    flavors = sorted(set((assignment.flavors if assignment else {}).values()))
    on = f" on flavor(s) {', '.join(flavors)}" if flavors else ""
    message = (
        f"admitted by Kueue to ClusterQueue {wl.cluster_queue}: {count} of {spec.replicas} "
        f"worker(s){on}"
    )
    _set(ctx, True, ADMITTED, message)
    _pods_ready(ctx, wl, min(spec.min_nodes, count))
    placements = {
        c.ROLE_WORKER: kueue.placement(wl, kueue.PODSET_WORKERS, view.flavors),
        c.ROLE_STORE: kueue.placement(wl, kueue.PODSET_STORE, view.flavors),
    }
    admitted = spec if count == spec.replicas else spec.model_copy(update={"replicas": count})
    return replace(ctx, spec=admitted, placements=placements)


def _unqueued(ctx: Ctx) -> None:
    """The queue label was removed: the job runs without a queue, and the Workload it had
    goes with the quota it may hold. The condition stays until the Workload is gone, so
    the reconciler keeps looking at Kueue until then."""
    view = ctx.obs.queue
    st = ctx.draft.status
    if view is not None and view.workload is not None:
        wl = view.workload
        ctx.draft.workload.append(WorkloadWrite("delete", wl.name, wl.uid, {}))
        return
    st.conditions = [x for x in st.conditions if x.type != COND_QUEUE_ADMITTED]


def _pods_ready(ctx: Ctx, wl: kueue.ObservedWorkload, need: int) -> None:
    """Tell Kueue the job runs (its waitForPodsReady evicts one that never says so)."""
    if ctx.spec.suspend:
        return  # being stopped: the deactivation is what Kueue hears of
    running = [p for p in ctx.current if p.phase == "Running" and p.ready and not p.deleting]
    store = next((p for p in ctx.obs.pods if p.role == c.ROLE_STORE), None)
    ready = len(running) >= need and store is not None and store.phase == "Running"
    patch = kueue.pods_ready_patch(wl, ready, ctx.now)
    if patch is not None:
        ctx.draft.workload.append(WorkloadWrite("status", wl.name, wl.uid, patch))


def finish_workload(ctx: Ctx) -> None:
    """A finished job finishes its Workload, so Kueue frees the quota."""
    view = ctx.obs.queue
    wl = view.workload if view is not None else None
    phase = ctx.draft.status.phase
    if wl is None or wl.finished or phase is None or not phase.finished:
        return
    patch = kueue.finish_patch(
        wl, phase is Phase.SUCCEEDED, ctx.draft.status.message or "", ctx.now
    )
    ctx.draft.workload.append(WorkloadWrite("status", wl.name, wl.uid, patch))


def _hold(ctx: Ctx, reason: str, message: str) -> Ctx:
    _set(ctx, False, reason, message)
    return replace(ctx, hold=(reason, message))


def _set(ctx: Ctx, status: bool, reason: str, message: str) -> None:
    st = ctx.draft.status
    old = get_condition(st.conditions, COND_QUEUE_ADMITTED)
    if old is None or old.reason != reason:
        # One Event per transition, not per retry of the same state.
        if reason in _WARNINGS:
            ctx.draft.warn(reason, message)
        else:
            ctx.draft.note(reason, message)
    st.conditions = set_condition(
        st.conditions, COND_QUEUE_ADMITTED, status, reason, message, ctx.now, ctx.obs.generation
    )

"""The job's children: what to create (Service, NetworkPolicy, store, workers, within
capacity), the worker counts in status, clean-up of a finished job and its TTL.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from trainop.api import constants as c
from trainop.api.spec import CleanPodPolicy, TrainingJobSpec
from trainop.core import build
from trainop.core.config import OperatorConfig
from trainop.core.plan.capacity import placeable
from trainop.core.plan.model import (
    Draft,
    Observed,
    store_pod,
)


def ensure_children(
    draft: Draft, obs: Observed, spec: TrainingJobSpec, now: datetime, config: OperatorConfig
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
    store = store_pod(obs.pods)
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
    room = placeable(spec, obs, config)
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
            "CreatedWorkers",
            f"creating {len(missing)} worker pod(s): slots " + slot_ranges(missing),
        )


def slot_ranges(slots: list[int]) -> str:
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


def set_counts(draft: Draft, obs: Observed, spec: TrainingJobSpec, desired: int) -> None:
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


def clean_up(draft: Draft, obs: Observed, spec: TrainingJobSpec) -> None:
    """A finished job leaves no pod holding a GPU (unless cleanPodPolicy None says so)."""
    policy = spec.run_policy.clean_pod_policy
    if policy is CleanPodPolicy.NONE:
        return
    for pod in obs.pods:
        if pod.deleting:
            continue
        if policy is CleanPodPolicy.ALL or not pod.finished:
            draft.delete(pod, None, "job finished")


def schedule_ttl(draft: Draft, spec: TrainingJobSpec, now: datetime) -> None:
    ttl = spec.run_policy.ttl_seconds_after_finished
    done = draft.status.completion_time
    if ttl is None or done is None:
        return
    left = (done + timedelta(seconds=ttl) - now).total_seconds()
    if left <= 0:
        draft.delete_job = True
    else:
        draft.waits.append(left)

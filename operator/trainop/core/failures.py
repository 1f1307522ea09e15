"""Failure classification and the failure policy: pure functions with table tests."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from trainop.api import constants as c
from trainop.api.spec import Action, FailurePolicy, FailureRule, Reason
from trainop.api.status import LiveWorker
from trainop.core.observe import ObservedPod
from trainop_runtime import contract as rc

_OOM_REASON = "OOMKilled"
# DisruptionTarget reasons (k8s.io/api/core/v1) -> our class. Each is a deletion the job
# did not cause; the victim may still be terminating (and checkpointing) when we see it.
_DISRUPTIONS: dict[str, Reason] = {
    "PreemptionByScheduler": Reason.PREEMPTED,
    "EvictionByEvictionAPI": Reason.EVICTED,  # kubectl drain, PDB-aware evictions
    "TerminationByKubelet": Reason.EVICTED,  # node pressure or graceful node shutdown
    "DeletionByTaintManager": Reason.NODE_LOST,  # NoExecute taint, e.g. node unreachable
    "DeletionByPodGC": Reason.NODE_LOST,  # bound to a node that no longer exists
}

# pod.status.reason set by the kubelet (or node controllers) when it ends a pod itself.
_POD_STATUS_REASONS: dict[str, Reason] = {
    "Evicted": Reason.EVICTED,  # node pressure
    "DeadlineExceeded": Reason.DEADLINE_EXCEEDED,  # the pod's own activeDeadlineSeconds
    "NodeLost": Reason.NODE_LOST,
    "UnexpectedAdmissionError": Reason.NODE_LOST,
    "NodeAffinity": Reason.NODE_LOST,
}


@dataclass(frozen=True)
class Failure:
    reason: Reason
    exit_code: int | None
    message: str


def classify(
    pod: ObservedPod, *, node_lost: bool = False, store: ObservedPod | None = None
) -> Failure:
    """Why a worker pod stopped. Order matters: the most specific evidence wins.
    `store` is the job's rendezvous store pod as observed now, if any."""
    term = pod.trainer
    exit_code = term.exit_code if term else None
    message = (term.message if term and term.message else pod.status_message) or ""
    if node_lost:
        return Failure(Reason.NODE_LOST, exit_code, f"node {pod.node_name} is lost")
    if exit_code == rc.EXIT_RENDEZVOUS_LOST and _store_replaced(pod, store):
        # Every worker fails for the one store loss; none of them is the job's fault. With
        # the same store still running, the failure is the worker's (network, policy) and
        # stays an ordinary counted Error, so a store it can never reach spends the budget.
        return Failure(Reason.RENDEZVOUS_LOST, exit_code, message or "rendezvous store lost")
    if term is not None and term.reason == _OOM_REASON:
        return Failure(Reason.OOM_KILLED, exit_code, message or "the trainer ran out of memory")
    # DisruptionTarget=True beats the exit code: a trainer stopped by SIGTERM exits 143.
    if pod.disruption_reason is not None:
        reason = _DISRUPTIONS.get(pod.disruption_reason, Reason.PREEMPTED)
        return Failure(reason, exit_code, message or pod.disruption_reason)
    if _ended_by_deletion(pod):
        # `kubectl delete pod` on a real kubelet: SIGTERM, a checkpoint, exit 143. Only
        # pods the operator followed and did not delete itself get here (plan.py).
        why = f"pod {pod.name} was deleted by something other than trainop (e.g. kubectl delete)"
        return Failure(Reason.DELETED, exit_code, f"{why}: {message}" if message else why)
    reason = _POD_STATUS_REASONS.get(pod.status_reason or "", Reason.ERROR)
    if reason is Reason.DEADLINE_EXCEEDED:
        # The trainer's log tail says nothing about a kill from outside; the kubelet does.
        message = pod.status_message or "the pod ran longer than its activeDeadlineSeconds"
    return Failure(reason, exit_code, message)


def _ended_by_deletion(pod: ObservedPod) -> bool:
    """Deleting, and the trainer stopped after the delete was asked for: the deletion
    ended it. A trainer that failed first and was deleted afterwards keeps its own
    failure, and so does one whose times are unknown (counted: a loop of uncounted
    restarts is the worse mistake)."""
    term = pod.trainer
    if not pod.deleting or term is None:
        return False
    if term.finished_at is None or pod.delete_requested is None:
        return False
    # Both are whole seconds: a stop in the same second as the request is the request's.
    return term.finished_at >= pod.delete_requested


def _store_replaced(worker: ObservedPod, store: ObservedPod | None) -> bool:
    """The store this worker rendezvoused with is gone: no store now, one that is not
    running, or one created after the worker (the operator replaced it)."""
    if store is None or store.deleting or store.phase != "Running":
        return True
    return (
        store.created is not None and worker.created is not None and store.created > worker.created
    )


# Applied after the user's rules. Disruptions that are not the job's fault are
# replaced without spending the budget; everything else restarts the pod, counted.
DEFAULT_RULES: tuple[FailureRule, ...] = (
    FailureRule(
        action=Action.IGNORE,
        reasons=[
            Reason.PREEMPTED,
            Reason.EVICTED,
            Reason.NODE_LOST,
            Reason.DELETED,
            Reason.RENDEZVOUS_LOST,
        ],
    ),
)


def matches(rule: FailureRule, failure: Failure) -> bool:
    if rule.reasons is not None and failure.reason not in rule.reasons:
        return False
    return rule.exit_codes is None or failure.exit_code in rule.exit_codes


def decide_action(policy: FailurePolicy, failure: Failure) -> Action:
    for rule in (*policy.rules, *DEFAULT_RULES):
        if matches(rule, failure):
            return rule.action
    return Action.RESTART_POD


def counts(action: Action) -> bool:
    return action in (Action.RESTART_POD, Action.RESTART_JOB)


def backoff_seconds(policy: FailurePolicy, restarts: int) -> float:
    """Delay before the replacement after the Nth counted restart (N >= 1): exponential, capped."""
    if restarts <= 0 or policy.backoff_seconds == 0:
        return 0.0
    delay = policy.backoff_seconds * 2 ** min(restarts - 1, 30)
    return float(min(delay, policy.max_backoff_seconds))


def vanished(pod: LiveWorker) -> Failure:
    """A worker that disappeared with no failure seen: deleted by a person or a tool."""
    return Failure(
        Reason.DELETED,
        None,
        f"pod {pod.pod} was deleted by something other than trainop (e.g. kubectl delete)",
    )


@dataclass(frozen=True)
class Tracked:
    live: list[LiveWorker]  # what status.liveWorkers becomes
    new_restarts: dict[str, int]  # pod name -> in-place restarts not counted before
    gone: list[LiveWorker]  # known pods that vanished


def track_workers(
    known: Sequence[LiveWorker], pods: Sequence[ObservedPod], written_off: Collection[str]
) -> Tracked:
    """Follow live worker pods and fold their agents' in-place restarts into the budget.

    Purely computational. Each pod reports its own agent's restart count (torchrun's
    TORCHELASTIC_RESTART_COUNT): only the agent whose worker failed spends one, so the sum
    of the per-pod increases counts each failure once. Marks are per pod UID: a
    replacement starts again from 0 and never lowers what was counted. A pod first seen
    already deleting, or one in ``written_off`` (failures already handled), is not picked
    up, so a pod the operator deleted is never counted again nor mistaken for vanished.
    """
    by_uid = {w.pod_uid: w for w in known}
    seen = {p.uid for p in pods}
    live: list[LiveWorker] = []
    new: dict[str, int] = {}
    for pod in pods:
        if pod.role != c.ROLE_WORKER:
            continue
        mark = by_uid.get(pod.uid)
        if mark is None and (pod.deleting or pod.uid in written_off):
            continue
        before = mark.restarts if mark is not None else 0
        reported = pod.progress.get(rc.P_RESTARTS)
        now = reported if isinstance(reported, int) and not isinstance(reported, bool) else 0
        if now > before:
            new[pod.name] = now - before
        live.append(LiveWorker(pod=pod.name, pod_uid=pod.uid, restarts=max(now, before)))
    gone = [w for w in known if w.pod_uid not in seen]
    # Sorted: the API's list order must not make an otherwise equal status differ.
    live.sort(key=lambda w: (w.pod, w.pod_uid))
    return Tracked(live=live, new_restarts=new, gone=gone)

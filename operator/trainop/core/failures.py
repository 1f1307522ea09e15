"""Failure classification and the failure policy: pure functions with table tests."""

from __future__ import annotations

from dataclasses import dataclass

from trainop.api.spec import Action, FailurePolicy, FailureRule, Reason
from trainop.core.observe import ObservedPod

_OOM_REASON = "OOMKilled"


@dataclass(frozen=True)
class Failure:
    reason: Reason
    exit_code: int | None
    message: str


def classify(pod: ObservedPod, *, node_lost: bool = False) -> Failure:
    """Why a worker pod stopped. Order matters: the most specific evidence wins."""
    term = pod.trainer
    exit_code = term.exit_code if term else None
    message = (term.message if term and term.message else pod.status_message) or ""
    if node_lost:
        return Failure(Reason.NODE_LOST, exit_code, f"node {pod.node_name} is lost")
    if term is not None and term.reason == _OOM_REASON:
        return Failure(Reason.OOM_KILLED, exit_code, message or "the trainer ran out of memory")
    if pod.status_reason == "Evicted":
        return Failure(Reason.EVICTED, exit_code, message)
    # DisruptionTarget=True: scheduler preemption, API eviction, taint manager, kubelet.
    if pod.disruption_reason is not None:
        return Failure(Reason.PREEMPTED, exit_code, message or str(pod.disruption_reason))
    if pod.status_reason in ("NodeLost", "UnexpectedAdmissionError", "NodeAffinity"):
        return Failure(Reason.NODE_LOST, exit_code, message)
    return Failure(Reason.ERROR, exit_code, message)


# Applied after the user's rules. Disruptions that are not the job's fault are
# replaced without spending the budget; everything else restarts the pod, counted.
DEFAULT_RULES: tuple[FailureRule, ...] = (
    FailureRule(
        action=Action.IGNORE,
        reasons=[Reason.PREEMPTED, Reason.EVICTED, Reason.NODE_LOST, Reason.DELETED],
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

"""Hang detection: a running worker whose trainer made no step for longer than its
bound gets the Stalled condition and a Warning Event, and, with
failurePolicy.restartOnHang, is restarted as a counted failure of reason Hang.

The evidence is the progress report each worker's sidecar copies onto its pod: the
time of the trainer's last report, written right after a step. A hung trainer (a
stuck collective, a stopped process, a deadlocked data loader) stops writing it. A
worker that never reported (starting, or a script that reports no progress) is not
judged: there is no step to miss.
"""

from __future__ import annotations

from dataclasses import dataclass

from trainop.api.spec import Reason
from trainop.core.conditions import get_condition, set_condition
from trainop.core.failures import Failure
from trainop.core.observe import ObservedPod
from trainop.core.plan.model import COND_STALLED, MAX_HANDLED, Ctx
from trainop.core.plan.phases import as_number
from trainop.core.plan.restarts import record_failure
from trainop_runtime import contract as rc

# With no bound set: this many of the worker's own last step times, and never less than
# the floor (a first step that compiles, an eval pass, a checkpoint save all take long).
STEP_TIMES = 10
FLOOR_SECONDS = 120.0


@dataclass(frozen=True)
class Stall:
    pod: ObservedPod
    silent: float  # seconds since the trainer's last report
    bound: float
    step: int


def hang_bound(explicit: int | None, step_seconds: float | None) -> float:
    if explicit is not None:
        return float(explicit)
    return max(STEP_TIMES * (step_seconds or 0.0), FLOOR_SECONDS)


def stage_hang(ctx: Ctx) -> bool:
    """Judge the running workers. True when a hang restart used up the budget (the job
    has failed); otherwise the pipeline goes on."""
    draft, policy = ctx.draft, ctx.spec.failure_policy
    stalls: list[Stall] = []
    for pod in ctx.current:
        if pod.phase != "Running" or pod.deleting or pod.name in draft.deletes:
            continue
        last = as_number(pod.progress.get(rc.P_TIME))
        step = pod.progress.get(rc.P_STEP)
        if last is None or not isinstance(step, int):
            continue
        bound = hang_bound(policy.hang_seconds, as_number(pod.progress.get(rc.P_STEP_SECONDS)))
        silent = ctx.now.timestamp() - last
        if silent > bound:
            stalls.append(Stall(pod, silent, bound, step))
        else:
            draft.waits.append(bound - silent + 1.0)  # nothing else would wake the job
    _condition(ctx, stalls)
    if not policy.restart_on_hang:
        return False
    for stall in stalls:
        # Counted once: the pod is deleted now, and its end is a handled failure.
        handled = [*draft.status.handled_failures, stall.pod.uid]
        draft.status.handled_failures = handled[-MAX_HANDLED:]
        failure = Failure(Reason.HANG, None, _what(stall))
        action = record_failure(
            draft, ctx.obs, ctx.spec, ctx.now, stall.pod.name, stall.pod.uid, failure
        )
        if action is None:
            return True
        # The trainer cannot be reached inside its pod: the pod goes, with its grace
        # period (a stuck collective may still let the SIGTERM checkpoint through).
        draft.delete(stall.pod, None, "restarting a hung worker")
    return False


def _what(stall: Stall) -> str:
    return (
        f"worker {stall.pod.name} made no training step for {stall.silent:.0f} s "
        f"(last step {stall.step}; bound {stall.bound:.0f} s)"
    )


def _condition(ctx: Ctx, stalls: list[Stall]) -> None:
    st, now, gen = ctx.draft.status, ctx.now, ctx.obs.generation
    old = get_condition(st.conditions, COND_STALLED)
    if not stalls:
        if old is not None and old.status == "True":
            st.conditions = set_condition(
                st.conditions, COND_STALLED, False, "Progressing", "every worker steps", now, gen
            )
        return
    message = "; ".join(_what(s) for s in stalls)
    if len(message) > 1024:
        message = message[:1000] + f"... ({len(stalls)} workers)"
    if ctx.spec.failure_policy.restart_on_hang:
        message += "; restarting (failurePolicy.restartOnHang)"
    else:
        message += (
            "; set failurePolicy.restartOnHang to restart stalled workers, or "
            "failurePolicy.hangSeconds if steps are this slow on purpose"
        )
    if old is None or old.status != "True":
        ctx.draft.warn("Stalled", message)
    st.conditions = set_condition(
        st.conditions, COND_STALLED, True, "NoProgress", message, now, gen
    )

"""Spec edits on a running job: a change to a field that shapes the workers restarts
them all together (README, "Editing a running job").
"""

from __future__ import annotations

from collections.abc import Mapping

from trainop.api.spec import NNODES_KEY
from trainop.core import build
from trainop.core.conditions import get_condition, set_condition
from trainop.core.plan.checks import pod_security_problem
from trainop.core.plan.model import (
    COND_SPEC_APPLIED,
    COND_SPEC_VALID,
    Ctx,
    Draft,
)
from trainop.core.plan.phases import spec_valid


def stage_spec_changed(ctx: Ctx) -> bool:
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
    changed = changed_fields(st.applied_spec, wanted)
    insecure = pod_security_problem(spec, obs, ctx.config)
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
        spec_valid(draft, obs, ctx.now, "UpdateRejected", message)
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


def changed_fields(before: Mapping[str, str], after: Mapping[str, str]) -> str:
    names = []
    for key in sorted(after):
        if before.get(key) == after[key]:
            continue
        if key == NNODES_KEY:
            names.append(f"the worker range {key} (now {after[key]})")
        else:
            names.append(f"spec.{key}")
    return ", ".join(names) or "the spec"


def spec_applied(draft: Draft, ctx: Ctx) -> None:
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

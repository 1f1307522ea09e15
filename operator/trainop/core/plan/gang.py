"""A job that asks for gang scheduling (spec.scheduling.gang): its PodGroup exists before
its workers, every worker is a member, and GangScheduled says what the gang waits for.
A cluster that serves no PodGroup API keeps the job Pending with a condition saying so,
never running its workers ungrouped (core/gang.py builds the objects).
"""

from __future__ import annotations

from typing import Any

from trainop.api import constants as c
from trainop.api.status import Phase
from trainop.core import gang
from trainop.core.conditions import get_condition, set_condition
from trainop.core.plan.model import COND_GANG_SCHEDULED, Ctx
from trainop.core.plan.phases import set_phase

NOT_SERVED = "PodGroupAPINotInstalled"
NOT_SERVED_RECHECK_SECONDS = 30.0


def _api(ctx: Ctx) -> str | None:
    view = ctx.obs.gang or gang.GangView()
    return gang.choose_api(ctx.spec, view.served)


def stage_gang_api(ctx: Ctx) -> bool:
    """Hold a gang job whose PodGroup API the cluster does not serve. True: settled."""
    wanted = ctx.spec.scheduling.gang
    if wanted is None or _api(ctx) is not None:
        return False
    which = (
        " or ".join(gang.APIS)
        if wanted.pod_group_api_version.value == "Auto"
        else wanted.pod_group_api_version.value
    )
    message = (
        f"spec.scheduling.gang asks for gang scheduling, but this cluster serves no PodGroup "
        f"API ({which}): install Volcano or scheduler-plugins' coscheduling with its PodGroup "
        "CRD, or remove spec.scheduling.gang; no worker is created meanwhile"
    )
    _condition(ctx, False, NOT_SERVED, message, warn=True)
    set_phase(ctx.draft, ctx.obs, ctx.now, Phase.PENDING, NOT_SERVED, message)
    ctx.draft.waits.append(NOT_SERVED_RECHECK_SECONDS)
    return True


def ensure_pod_group(ctx: Ctx) -> None:
    """The PodGroup, created with the job's first objects (before any worker pod)."""
    api = _api(ctx)
    view = ctx.obs.gang or gang.GangView()
    if api is None or view.pod_groups.get(api) is not None:
        return
    if any(o["kind"] == "Pod" and _worker(o) for o in ctx.draft.creates):
        ctx.draft.creates.insert(0, gang.build_pod_group(ctx.obs.job, ctx.spec, api))


def mark_members(ctx: Ctx, objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    api = _api(ctx)
    if api is None:
        return objs
    group = gang.pod_group_name(ctx.obs.job)
    return [gang.mark_member(o, api, group) if _worker(o) else o for o in objs]


def gang_status(ctx: Ctx) -> None:
    """GangScheduled: True once at least minMember workers run; else what it waits for."""
    api = _api(ctx)
    if api is None:
        return
    view = ctx.obs.gang or gang.GangView()
    name = gang.pod_group_name(ctx.obs.job)
    need = ctx.spec.min_nodes
    running = sum(1 for p in ctx.current if p.phase == "Running" and not p.deleting)
    if running >= need:
        _condition(
            ctx,
            True,
            "Scheduled",
            f"PodGroup {name} ({api}): {running} worker(s) running, minMember {need}",
        )
        return
    scheduler = ctx.spec.scheduling.scheduler_name or "the default scheduler (not a gang scheduler)"
    phase = gang.group_phase(view.pod_groups.get(api)) or "not set yet"
    _condition(
        ctx,
        False,
        "WaitingForGangScheduler",
        f"PodGroup {name} ({api}, minMember {need}, phase {phase}): {running} worker(s) "
        f"running; {scheduler} starts at least {need} together or none",
    )


def _worker(obj: dict[str, Any]) -> bool:
    labels = obj.get("metadata", {}).get("labels", {})
    return obj.get("kind") == "Pod" and labels.get(c.LABEL_ROLE) == c.ROLE_WORKER


def _condition(ctx: Ctx, status: bool, reason: str, message: str, *, warn: bool = False) -> None:
    st = ctx.draft.status
    old = get_condition(st.conditions, COND_GANG_SCHEDULED)
    if warn and (old is None or old.reason != reason):
        ctx.draft.warn(reason, message)
    st.conditions = set_condition(
        st.conditions, COND_GANG_SCHEDULED, status, reason, message, ctx.now, ctx.obs.generation
    )

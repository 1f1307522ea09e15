"""metav1.Condition bookkeeping: a transition time moves only when the status does."""

from __future__ import annotations

from datetime import datetime

from trainop.api.status import Condition


def set_condition(
    conditions: list[Condition],
    type_: str,
    status: bool,
    reason: str,
    message: str,
    now: datetime,
    generation: int | None,
) -> list[Condition]:
    text = "True" if status else "False"
    out: list[Condition] = []
    found = False
    for cond in conditions:
        if cond.type != type_:
            out.append(cond)
            continue
        found = True
        moved = now if cond.status != text else cond.last_transition_time
        out.append(
            Condition(
                type=type_,
                status=text,
                reason=reason,
                message=message,
                last_transition_time=moved,
                observed_generation=generation,
            )
        )
    if not found:
        out.append(
            Condition(
                type=type_,
                status=text,
                reason=reason,
                message=message,
                last_transition_time=now,
                observed_generation=generation,
            )
        )
    return out


def get_condition(conditions: list[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)

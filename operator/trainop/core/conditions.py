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
    if not reason:
        # metav1.Condition requires a CamelCase reason; "" is rejected by strict clients.
        raise ValueError(f"condition {type_} needs a non-empty reason")
    text = "True" if status else "False"
    old = get_condition(conditions, type_)
    new = Condition(
        type=type_,
        status=text,
        reason=reason,
        message=message,
        last_transition_time=(
            old.last_transition_time if old is not None and old.status == text else now
        ),
        observed_generation=generation,
    )
    if old is None:
        return [*conditions, new]
    return [new if cond.type == type_ else cond for cond in conditions]


def get_condition(conditions: list[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)

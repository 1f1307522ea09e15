"""Parse a TrainingJob spec at the boundary; one message format for operator and runner."""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Sequence

from pydantic import BaseModel, ValidationError

from trainop.api.spec import TrainingJobSpec


def format_validation_error(exc: ValidationError, prefix: str = "spec") -> str:
    """One clause per problem, with the field path a user can find in their YAML."""
    lines = []
    for err in exc.errors():
        msg = err["msg"].removeprefix("Value error, ")
        if not err["loc"] and msg.startswith(f"{prefix}."):
            # A cross-field rule names its own fields; "spec: spec.replicas ..." says it twice.
            lines.append(msg)
            continue
        loc = ".".join(str(p) for p in (prefix, *err["loc"]))
        if msg.startswith(f"{loc}."):
            # A check of a nested document (podTemplate.spec) names the fields itself.
            lines.append(msg)
            continue
        if err["type"] == "extra_forbidden":
            msg = _unknown_field(err["loc"])
        lines.append(f"{loc}: {msg}")
    return "; ".join(lines)


def _unknown_field(loc: Sequence[int | str]) -> str:
    """'unknown field', with the closest known name: a typo is the usual cause."""
    known = _fields_at(TrainingJobSpec, loc[:-1])
    close = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
    if close:
        return f"unknown field; did you mean {close[0]!r}?"
    return "unknown field; known fields here: " + ", ".join(sorted(known))


def _fields_at(model: type[BaseModel], path: Sequence[int | str]) -> list[str]:
    """The YAML names of the fields of the model found by following path. Pure."""
    for part in path:
        if isinstance(part, int):
            continue  # a list index: same model
        field = next(
            (f for n, f in model.model_fields.items() if part in (n, f.alias)),
            None,
        )
        nested = _model_in(field.annotation) if field is not None else None
        if nested is None:
            return []
        model = nested
    return [f.alias or n for n, f in model.model_fields.items()]


def _model_in(annotation: object) -> type[BaseModel] | None:
    """The model inside `X`, `X | None`, `list[X]` or `dict[str, X]`, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is not None:
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None


def parse_spec(raw: object) -> tuple[TrainingJobSpec | None, str | None]:
    """(spec, None) or (None, a message naming every bad field)."""
    try:
        return TrainingJobSpec.model_validate(raw), None
    except ValidationError as exc:
        return None, format_validation_error(exc)

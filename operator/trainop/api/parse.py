"""Parse a TrainingJob spec at the boundary; one message format for operator and runner."""

from __future__ import annotations

from pydantic import ValidationError

from trainop.api.spec import TrainingJobSpec


def format_validation_error(exc: ValidationError, prefix: str = "spec") -> str:
    """One clause per problem, with the field path a user can find in their YAML."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in (prefix, *err["loc"]))
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{loc}: {msg}")
    return "; ".join(lines)


def parse_spec(raw: object) -> tuple[TrainingJobSpec | None, str | None]:
    """(spec, None) or (None, a message naming every bad field)."""
    try:
        return TrainingJobSpec.model_validate(raw), None
    except ValidationError as exc:
        return None, format_validation_error(exc)

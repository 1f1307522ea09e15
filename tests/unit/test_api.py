"""The CRD (crds/) is the source of truth; the typed models must match it exactly."""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any, get_args, get_origin

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from trainop.api.parse import parse_spec
from trainop.api.spec import TrainingJobSpec
from trainop.api.status import TrainingJobStatus

ROOT = Path(__file__).resolve().parents[2]
CRD = yaml.safe_load((ROOT / "crds" / "trainop.dev_trainingjobs.yaml").read_text())
SCHEMA = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside Optional[...] / list[...] / Annotated[...], if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = get_origin(annotation)
    if origin in (typing.Union, types.UnionType, list, typing.Annotated):
        for arg in get_args(annotation):
            found = _model_of(arg)
            if found is not None:
                return found
    return None


def _bounds(field: Any) -> tuple[object, object]:
    """(ge, le) of an integer field, from its own metadata or the Annotated[int, ...]
    inside Optional[...] (a list's item bounds belong to the items)."""
    ge = le = None
    metas = list(field.metadata)
    for arg in get_args(field.annotation):
        if get_origin(arg) is typing.Annotated:
            metas += [m for extra in get_args(arg)[1:] for m in getattr(extra, "metadata", [])]
    for m in metas:
        ge = getattr(m, "ge", ge)
        le = getattr(m, "le", le)
    return ge, le


def _walk(model: type[BaseModel], schema: dict[str, Any], path: str) -> list[str]:
    problems = []
    props = schema.get("properties", {})
    fields = {(f.alias or n): f for n, f in model.model_fields.items()}
    for name in sorted(set(props) ^ set(fields)):
        where = "CRD only" if name in props else "model only"
        problems.append(f"{path}.{name}: {where}")
    for name, field in fields.items():
        if name not in props:
            continue
        sub = props[name]
        if sub.get("type") == "integer":
            # The API server refuses at apply what the model refuses: the same bounds.
            crd_bounds = (sub.get("minimum"), sub.get("maximum"))
            if _bounds(field) != crd_bounds:
                problems.append(f"{path}.{name}: bounds {_bounds(field)} != CRD {crd_bounds}")
        if sub.get("type") == "array":
            sub = sub.get("items", {})
        nested = _model_of(field.annotation)
        if nested is not None and "properties" in sub:
            problems += _walk(nested, sub, f"{path}.{name}")
        # `default: {}` on an object lets the API server fill its nested defaults,
        # which the recursion above already compares.
        if props[name].get("default") == {} and nested is not None:
            continue
        if "default" in props[name] and not field.is_required():
            default = field.get_default(call_default_factory=True)
            if default != props[name]["default"]:
                problems.append(
                    f"{path}.{name}: default {default!r} != CRD {props[name]['default']!r}"
                )
    return problems


@pytest.mark.parametrize(
    ("model", "key"), [(TrainingJobSpec, "spec"), (TrainingJobStatus, "status")]
)
def test_models_match_the_crd_field_for_field(model: type[BaseModel], key: str) -> None:
    assert _walk(model, SCHEMA["properties"][key], key) == []


def test_every_crd_field_has_a_description_for_kubectl_explain() -> None:
    missing = []

    def visit(node: dict[str, Any], path: str) -> None:
        for name, sub in node.get("properties", {}).items():
            if path == "" and name in ("metadata",):
                continue
            if "description" not in sub:
                missing.append(f"{path}.{name}")
            visit(sub, f"{path}.{name}")
            if "items" in sub:
                visit(sub["items"], f"{path}.{name}[]")

    visit(SCHEMA, "")
    assert missing == []


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        pytest.param(
            {"entrypoint": {"module": "x; rm -rf /"}}, "entrypoint.module", id="module-shell"
        ),
        pytest.param(
            {"entrypoint": {"module": "--rdzv-endpoint=evil:1"}},
            "entrypoint.module",
            id="module-as-flag",
        ),
        pytest.param({"entrypoint": {"script": "-x.py"}}, "entrypoint.script", id="script-flag"),
        pytest.param(
            {"entrypoint": {"command": ["--nnodes=9", "x"]}},
            "must not start with '-'",
            id="command-flag",
        ),
        pytest.param(
            {"entrypoint": {"module": "a", "script": "b.py"}}, "exactly one", id="two-entrypoints"
        ),
        pytest.param(
            {"replicas": 5, "maxReplicas": 4},
            "spec.replicas must be <= spec.maxReplicas",
            id="above-max",
        ),
        pytest.param(
            {"maxReplica": 4},
            "spec.maxReplica: unknown field; did you mean 'maxReplicas'?",
            id="typo-field",
        ),
        pytest.param(
            {"resources": {"gpu": 1}},
            "spec.resources.gpu: unknown field; did you mean 'gpus'?",
            id="nested-typo-field",
        ),
        pytest.param(
            {"zzzz": 1},
            "spec.zzzz: unknown field; known fields here: checkpoint, entrypoint, env,",
            id="unknown-field-lists-known",
        ),
        pytest.param(
            {"failurePolicy": {"rules": [{"action": "FailJob"}]}},
            "exitCodes or reasons",
            id="rule-without-matcher",
        ),
        # Numbers that become durations: past their bound, planning would overflow datetime.
        *(
            pytest.param(
                {section: {field: 300_000_000_000}},
                f"spec.{section}.{field}: Input should be less than or equal to {bound}",
                id=f"huge-{field}",
            )
            for section, field, bound in (
                ("runPolicy", "activeDeadlineSeconds", 31_536_000),
                ("runPolicy", "ttlSecondsAfterFinished", 31_536_000),
                ("failurePolicy", "backoffSeconds", 86_400),
                ("failurePolicy", "maxBackoffSeconds", 86_400),
                ("rendezvous", "joinTimeoutSeconds", 86_400),
                ("rendezvous", "lastCallTimeoutSeconds", 3_600),
                ("checkpoint", "everySeconds", 604_800),
            )
        ),
        pytest.param(
            {"terminationGracePeriodSeconds": 86_401},
            "spec.terminationGracePeriodSeconds: Input should be less than or equal to 86400",
            id="huge-grace",
        ),
    ],
)
def test_bad_specs_get_one_clear_line_naming_the_field(patch: dict[str, Any], message: str) -> None:
    raw = {"image": "i", "entrypoint": {"module": "m"}, **patch}
    spec, error = parse_spec(raw)
    assert spec is None
    assert error is not None
    assert message in error


def test_model_rejects_what_the_crd_rejects() -> None:
    with pytest.raises(ValidationError):
        TrainingJobSpec.model_validate({"image": "", "entrypoint": {"module": "m"}})

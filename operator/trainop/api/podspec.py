"""spec.podTemplate.spec checked against the API server's own PodSpec schema.

podspec.schema.json is generated from the API server's OpenAPI by
hack/podspec_schema.py; the CRD embeds the same schema, so `kubectl apply` refuses
what this refuses. This copy serves the local runner (no API server) and jobs
stored before the CRD carried the schema. It checks what a user gets wrong by hand:
field names (with the closest known one), kinds of value, enums, and restartPolicy.
"""

from __future__ import annotations

import difflib
import json
from functools import cache
from importlib import resources
from typing import Any

Schema = dict[str, Any]
_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
}
RESTART_POLICY_FIX = (
    "must be Never (or left out): trainop replaces failed workers itself and counts each "
    "against spec.failurePolicy.backoffLimit; a kubelet restart would bypass both"
)


@cache
def schema() -> Schema:
    text = resources.files("trainop.api").joinpath("podspec.schema.json").read_text()
    loaded: Schema = json.loads(text)
    return loaded


def problems(value: object, path: str = "spec.podTemplate.spec") -> list[str]:
    """Every problem found in a partial PodSpec, each naming its field. Pure."""
    found = _check(schema(), value, path)
    if isinstance(value, dict) and value.get("restartPolicy", "Never") != "Never":
        found.append(f"{path}.restartPolicy: {RESTART_POLICY_FIX}")
    return found


def _check(node: Schema, value: object, path: str) -> list[str]:
    if node.get("x-kubernetes-preserve-unknown-fields") and "properties" not in node:
        return []
    if node.get("x-kubernetes-int-or-string"):
        ok = isinstance(value, int | str) and not isinstance(value, bool)
        return [] if ok else [f"{path}: must be an integer or a string"]
    kind = node.get("type")
    if kind is not None and not _is(kind, value):
        return [f"{path}: must be {'an' if kind[0] in 'aeiou' else 'a'} {kind}"]
    if "enum" in node and value not in node["enum"]:
        allowed = ", ".join(str(e) for e in node["enum"])
        return [f"{path}: {value!r} is not one of {allowed}"]
    out: list[str] = []
    if isinstance(value, dict):
        out += [f"{path}.{r}: required" for r in node.get("required", []) if r not in value]
        props: Schema = node.get("properties") or {}
        extra = node.get("additionalProperties")
        for key, item in value.items():
            where = f"{path}.{key}"
            if key in props:
                out += _check(props[key], item, where)
            elif isinstance(extra, dict):
                out += _check(extra, item, where)
            elif props:
                out.append(f"{where}: {_unknown(str(key), list(props))}")
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        for i, item in enumerate(value):
            out += _check(node["items"], item, f"{path}[{i}]")
    return out


def _is(kind: str, value: object) -> bool:
    if isinstance(value, bool) and kind != "boolean":
        return False  # bool is an int in Python, never in JSON
    return isinstance(value, _TYPES.get(kind, (object,)))


def _unknown(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if close:
        return f"unknown field; did you mean {close[0]!r}?"
    return "unknown field; see `kubectl explain pod.spec` for the fields a PodSpec has"

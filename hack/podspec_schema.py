#!/usr/bin/env python3
"""Generate the schema of spec.podTemplate.spec from the API server's own PodSpec.

    python hack/podspec_schema.py            # from the cluster in $KUBECONFIG
    python hack/podspec_schema.py --check    # exit 1 if the committed files differ

The API server publishes core/v1's OpenAPI v3 at /openapi/v3/api/v1. This script
turns its PodSpec into a structural CRD schema (references inlined, descriptions
and defaults dropped, since the field is a partial PodSpec merged into the pods the
operator builds) and writes it to:

- operator/trainop/api/podspec.schema.json, which the operator and the local runner
  check a podTemplate against (trainop.api.podspec);
- the podTemplate.spec block of both CRD copies, between the GENERATED markers, so
  `kubectl apply` refuses a typo such as `nodeSelecter` (strict field validation).

Kubeflow's CRDs embed the PodTemplateSpec the same way (there through controller-gen).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_FILE = ROOT / "operator" / "trainop" / "api" / "podspec.schema.json"
CRD_FILES = (
    ROOT / "crds" / "trainop.dev_trainingjobs.yaml",
    ROOT / "charts" / "trainop" / "crds" / "trainop.dev_trainingjobs.yaml",
)
BEGIN = "# BEGIN GENERATED podTemplate.spec (hack/podspec_schema.py): do not edit"
END = "# END GENERATED podTemplate.spec"
ROOT_TYPE = "io.k8s.api.core.v1.PodSpec"
MAX_DESCRIPTION = 160
REF_PREFIX = "#/components/schemas/"
# Kept from the API server's schema, with the first sentence of each description;
# everything else (defaults, the patch-strategy and list-type hints, which would also
# demand defaulted map keys) is dropped. Defaults are the API server's to apply when
# it creates the pod.
KEEP = ("type", "format", "enum", "minimum", "maximum", "minLength", "maxLength", "pattern")
# Refused at kubectl apply with this message, in the CRD only (the local runner's
# check says the same through trainop.api.podspec).
RULES = [
    {
        "rule": "!has(self.restartPolicy) || self.restartPolicy == 'Never'",
        "fieldPath": ".restartPolicy",
        "message": (
            "spec.podTemplate.spec.restartPolicy must be Never (or left out): trainop "
            "replaces failed workers itself and counts each against "
            "spec.failurePolicy.backoffLimit; a kubelet restart would bypass both"
        ),
    }
]


def structural(doc: dict[str, Any], root: str = ROOT_TYPE) -> dict[str, Any]:
    """The CRD-ready schema of `root` in an OpenAPI v3 document. Pure."""
    schemas = doc["components"]["schemas"]

    def convert(node: dict[str, Any], stack: tuple[str, ...]) -> dict[str, Any]:
        ref = node.get("$ref")
        all_of = node.get("allOf")
        if ref is None and isinstance(all_of, list) and len(all_of) == 1:
            ref = all_of[0].get("$ref")
        about = _first_sentence(node.get("description"))
        if ref is not None:
            name = ref.removeprefix(REF_PREFIX)
            if name in stack:  # a recursive type: accept whatever is there
                inner = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
            else:
                inner = convert(schemas[name], (*stack, name))
            # The field's own words over its type's (a field says what it is for).
            return {**inner, "description": about} if about else inner
        described = {"description": about} if about else {}
        if node.get("format") == "int-or-string" or (
            "oneOf" in node and {s.get("type") for s in node["oneOf"]} == {"string", "number"}
        ):
            # IntOrString, and Quantity (which CRDs cannot type as string-or-number).
            return {"x-kubernetes-int-or-string": True, **described}
        out = {k: node[k] for k in KEEP if k in node} | described
        if out.get("format") == "int-or-string":
            out.pop("format")
        props = node.get("properties")
        if isinstance(props, dict):
            out["properties"] = {k: convert(v, stack) for k, v in sorted(props.items())}
            required = [r for r in node.get("required", []) if r in props]
            if required:
                out["required"] = sorted(required)
        if isinstance(node.get("items"), dict):
            out["items"] = convert(node["items"], stack)
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            out["additionalProperties"] = convert(extra, stack)
        if out.get("type") == "object" and "properties" not in out and extra is None:
            # An open map (e.g. RawExtension): structural schemas must say so.
            out["x-kubernetes-preserve-unknown-fields"] = True
        return out

    schema = convert(schemas[root], (root,))
    # A partial PodSpec: the operator supplies the containers, so none is required here.
    schema.pop("required", None)
    return schema


def _first_sentence(text: object) -> str | None:
    """For `kubectl explain`: the first sentence of the API's own description. The
    whole text would make the CRD too big for a client-side `kubectl apply` (its
    last-applied annotation is limited to 256 KiB)."""
    if not isinstance(text, str) or not text.strip():
        return None
    first = re.split(r"(?<=\.)\s", text.strip(), maxsplit=1)[0]
    return first if len(first) <= MAX_DESCRIPTION else first[: MAX_DESCRIPTION - 3] + "..."


def fetch(kubectl: str) -> dict[str, Any]:
    raw = subprocess.run(
        [kubectl, "get", "--raw", "/openapi/v3/api/v1"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    doc: dict[str, Any] = json.loads(raw)
    return doc


def schema_json(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=1, sort_keys=True) + "\n"


def crd_block(schema: dict[str, Any], indent: str) -> str:
    """The YAML of podTemplate.spec's schema, one JSON line per field (JSON is YAML)."""
    node = {
        "type": "object",
        "description": (
            "A partial core/v1 PodSpec merged into every worker pod (generated from the "
            "API server's OpenAPI: a misspelt field is refused)."
        ),
        "x-kubernetes-validations": RULES,
        **schema,
    }
    lines = [f"{indent}{BEGIN}", f"{indent}spec:"]
    for key, value in node.items():
        lines.append(f"{indent}  {key}: {json.dumps(value, sort_keys=True)}")
    lines.append(f"{indent}{END}")
    return "\n".join(lines) + "\n"


def with_block(crd_text: str, schema: dict[str, Any]) -> str:
    lines = crd_text.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.strip() == BEGIN)
    end = next(i for i, line in enumerate(lines) if line.strip() == END)
    indent = lines[start][: len(lines[start]) - len(lines[start].lstrip())]
    return "".join([*lines[:start], crd_block(schema, indent), *lines[end + 1 :]])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the files are stale")
    parser.add_argument("--kubectl", default=os.environ.get("KUBECTL", "kubectl"))
    parser.add_argument("--openapi", help="a saved /openapi/v3/api/v1 document instead")
    args = parser.parse_args()
    doc = json.loads(Path(args.openapi).read_text()) if args.openapi else fetch(args.kubectl)
    schema = structural(doc)
    wanted = {SCHEMA_FILE: schema_json(schema)}
    for crd in CRD_FILES:
        wanted[crd] = with_block(crd.read_text(), schema)
    stale = [p for p, text in wanted.items() if not p.exists() or p.read_text() != text]
    if args.check:
        for path in stale:
            print(f"stale: {path.relative_to(ROOT)}; run python hack/podspec_schema.py")
        return 1 if stale else 0
    for path in stale:
        path.write_text(wanted[path])
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

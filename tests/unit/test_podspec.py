"""spec.podTemplate.spec against the API server's PodSpec schema, and the image grammar:
what users really write passes, and the CRD carries exactly the schema the model checks."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from trainop.api import podspec
from trainop.api.parse import parse_spec
from trainop.api.spec import IMAGE_PATTERN

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location(
    "podspec_schema", ROOT / "hack" / "podspec_schema.py"
)
assert _spec is not None
assert _spec.loader is not None
gen = importlib.util.module_from_spec(_spec)
sys.modules["podspec_schema"] = gen
_spec.loader.exec_module(gen)


@pytest.mark.parametrize("crd", gen.CRD_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_both_crd_copies_embed_the_schema_the_model_checks(crd: Path) -> None:
    text = crd.read_text()
    assert gen.with_block(text, podspec.schema()) == text
    node = yaml.safe_load(text)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    pod = node["properties"]["spec"]["properties"]["podTemplate"]["properties"]["spec"]
    assert pod["properties"] == podspec.schema()["properties"]
    assert "containers" in pod["properties"]
    assert "required" not in pod  # a partial PodSpec: trainop supplies the containers


@pytest.mark.parametrize(
    "pod_spec",
    [
        pytest.param({"nodeSelector": {"gpu": "h100"}}, id="node-selector"),
        pytest.param(
            {
                "containers": [
                    {
                        "name": "trainer",
                        "resources": {"limits": {"cpu": 8, "memory": "64Gi"}},
                        "volumeMounts": [{"name": "shm", "mountPath": "/dev/shm"}],
                        "securityContext": {"capabilities": {"add": ["IPC_LOCK"]}},
                        "ports": [{"containerPort": 8080, "name": "debug"}],
                    }
                ],
                "volumes": [{"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}}],
            },
            id="shm-and-limits",
        ),
        pytest.param({"restartPolicy": "Never", "hostIPC": True}, id="restart-never"),
        pytest.param(
            {"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}]},
            id="tolerations",
        ),
        pytest.param(
            {
                "affinity": {
                    "podAntiAffinity": {
                        "preferredDuringSchedulingIgnoredDuringExecution": [
                            {
                                "weight": 1,
                                "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname"},
                            }
                        ]
                    }
                }
            },
            id="affinity",
        ),
    ],
)
def test_what_users_write_in_a_pod_template_passes(pod_spec: dict[str, Any]) -> None:
    assert podspec.problems(pod_spec) == []


def test_the_examples_pod_templates_pass() -> None:
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            _, error = parse_spec(doc["spec"])
            assert error is None, f"{path.name}: {error}"


@pytest.mark.parametrize(
    ("pod_spec", "said"),
    [
        (
            {"nodeSelecter": {}},
            "spec.podTemplate.spec.nodeSelecter: unknown field; did you mean 'nodeSelector'?",
        ),
        ({"hostNetwork": "true"}, "spec.podTemplate.spec.hostNetwork: must be a boolean"),
        ({"containers": [{"image": "x"}]}, "spec.podTemplate.spec.containers[0].name: required"),
        ({"restartPolicy": "Always"}, "spec.podTemplate.spec.restartPolicy: must be Never"),
        ({"dnsPolicy": "Sometimes"}, "spec.podTemplate.spec.dnsPolicy: 'Sometimes' is not one of"),
        (
            {"containers": [{"name": "t", "resources": {"limits": {"cpu": True}}}]},
            "must be an integer or a string",
        ),
    ],
)
def test_a_bad_pod_template_names_the_field_and_what_is_wrong(
    pod_spec: dict[str, Any], said: str
) -> None:
    assert any(said in p for p in podspec.problems(pod_spec)), podspec.problems(pod_spec)


@pytest.mark.parametrize(
    "image",
    [
        "trainer",
        "trainer:1",
        "ghcr.io/trainop/trainer:0.1.0",
        "localhost:5000/team/model-trainer:2024.01_rc1",
        "nvcr.io/nvidia/pytorch:24.01-py3",
        "docker.io/library/python:3.12-slim-bookworm",
        "registry.example.com/a/b/c@sha256:" + "ab" * 32,
        "ghcr.io/x/y:v1@sha256:" + "0" * 64,
    ],
)
def test_real_image_references_pass_the_grammar(image: str) -> None:
    assert re.fullmatch(IMAGE_PATTERN, image)


def test_the_crd_checks_images_with_the_same_grammar() -> None:
    crd = yaml.safe_load((ROOT / "crds" / "trainop.dev_trainingjobs.yaml").read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec["properties"]["image"]["pattern"] == IMAGE_PATTERN
    assert spec["properties"]["metrics"]["properties"]["image"]["pattern"] == IMAGE_PATTERN

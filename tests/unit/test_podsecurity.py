"""Pod Security from the operator (the pure plan): every baseline violation in the corpus
is refused before anything is created, naming the field and the setting that allows it;
a namespace the admin allowed more gets it; "restricted" asks for what it needs."""

from __future__ import annotations

from typing import Any

import pytest

from tests.factories import NOW, observed
from tests.hostile import POD_SECURITY, Case
from trainop.api.parse import parse_spec
from trainop.core import podsecurity
from trainop.core.config import OperatorConfig
from trainop.core.plan import Plan, compute_plan
from trainop.core.podsecurity import Level

BASELINE = OperatorConfig()


def plan(case: Case | dict[str, Any], config: OperatorConfig = BASELINE) -> Plan:
    raw = case.spec() if isinstance(case, Case) else case
    spec, error = parse_spec(raw)
    assert error is None, error
    return compute_plan(observed([], the_spec=spec, service=False), NOW, config)


@pytest.mark.parametrize("case", POD_SECURITY, ids=lambda c: c.id)
def test_each_baseline_violation_is_refused_naming_the_field_and_nothing_is_created(
    case: Case,
) -> None:
    p = plan(case)
    assert p.creates == ()
    assert p.status.reason == "PodSecurity"
    message = p.status.message or ""
    assert case.field in message
    assert case.also in message
    assert "Pod Security level baseline in namespace team-a" in message
    assert "security.podSecurityNamespaces.team-a" in message  # the setting that allows it


@pytest.mark.parametrize("case", POD_SECURITY, ids=lambda c: c.id)
def test_a_namespace_allowed_privileged_gets_what_it_asks_for(case: Case) -> None:
    allowed = OperatorConfig(pod_security_namespaces={"team-a": Level.PRIVILEGED})
    p = plan(case, allowed)
    assert p.status.reason != "PodSecurity"
    assert any(o["kind"] == "Pod" for o in p.creates)


RESTRICTED = OperatorConfig(pod_security_namespaces={"team-a": Level.RESTRICTED})
BASE = POD_SECURITY[0].spec() | {"podTemplate": {}}


def test_restricted_names_what_the_trainer_container_lacks() -> None:
    p = plan(BASE, RESTRICTED)
    assert p.creates == ()
    message = p.status.message or ""
    for wanted in (
        "allowPrivilegeEscalation",
        "capabilities.drop",
        "runAsNonRoot",
        "seccompProfile",
    ):
        assert f"spec.podTemplate.spec.containers[name=trainer].securityContext.{wanted}" in message


def test_a_restricted_pod_template_passes_restricted() -> None:
    hardened = {
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [
            {
                "name": "trainer",
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"]},
                },
            }
        ],
    }
    p = plan({**BASE, "podTemplate": {"spec": hardened}}, RESTRICTED)
    assert p.status.reason != "PodSecurity", p.status.message
    assert any(o["kind"] == "Pod" for o in p.creates)


def test_restricted_refuses_volume_types_outside_its_list() -> None:
    spec = {**BASE, "checkpoint": {"volume": {"nfs": {"server": "nfs", "path": "/ckpt"}}}}
    found = podsecurity.violations(
        {"volumes": [{"name": "checkpoint", "nfs": {}}]},
        Level.RESTRICTED,
        checkpoint_volume="checkpoint",
    )
    assert "spec.checkpoint.volume.nfs: volume type nfs" in found
    assert plan(spec, RESTRICTED).status.reason == "PodSecurity"


def test_the_generated_pod_itself_meets_baseline_and_its_sidecar_restricted() -> None:
    p = plan(BASE)
    (pod,) = [o for o in p.creates if o["kind"] == "Pod" and "worker" in o["metadata"]["name"]][:1]
    assert podsecurity.violations(pod["spec"], Level.BASELINE) == []
    sidecar = {"initContainers": pod["spec"]["initContainers"]}
    assert podsecurity.violations(sidecar, Level.RESTRICTED) == []


@pytest.mark.parametrize(
    ("text", "levels"),
    [
        ("", {}),
        ("rdma=privileged", {"rdma": Level.PRIVILEGED}),
        ("a=baseline, b=restricted", {"a": Level.BASELINE, "b": Level.RESTRICTED}),
    ],
)
def test_the_charts_namespace_levels_parse(text: str, levels: dict[str, Level]) -> None:
    from trainop.handlers.operator import parse_levels

    assert parse_levels(text) == levels


def test_a_misspelt_level_stops_the_operator_instead_of_meaning_baseline() -> None:
    from trainop.handlers.operator import parse_levels

    with pytest.raises(ValueError, match="privilegd"):
        parse_levels("rdma=privilegd")

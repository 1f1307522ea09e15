"""Isolation on the real control plane: Pod Security for the pods trainop creates on a
job author's behalf, and a NetworkPolicy per job.

The chart's ValidatingAdmissionPolicy refuses every baseline violation of the corpus at
`kubectl apply`, naming the field; where it is not installed the operator refuses the
job itself (SpecValid=False, nothing created). Every job gets a NetworkPolicy that lets
only its own pods in (plus the metrics port). The local node runs no network-policy
engine (tests/cluster/README.md), so enforcement is not exercised: the objects are.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.chart.helpers import template
from tests.cluster.conftest import Cluster, Operator, wait_for, wait_until
from tests.cluster.test_operator import status, tj, until_running
from tests.hostile import POD_SECURITY, Case

pytestmark = pytest.mark.cluster


@pytest.fixture
def policy(crd: Cluster, ns: str) -> Iterator[str]:
    """The chart's pod-security policy, as `helm install` renders it, bound to `ns` only
    (so the other tests of the session run without it)."""
    rendered = template("--set", f"fullnameOverride=psa-{ns}")
    vap = rendered.one("ValidatingAdmissionPolicy", "pod-security")
    binding = rendered.one("ValidatingAdmissionPolicyBinding", "pod-security")
    binding["spec"]["matchResources"] = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}
    }
    for obj in (vap, binding):
        crd.apply(obj)
    try:
        yield vap["metadata"]["name"]
    finally:
        for obj in (binding, vap):
            crd.kubectl("delete", obj["kind"].lower(), obj["metadata"]["name"], check=False)


def _apply(c: Cluster, ns: str, name: str, spec: dict[str, Any]) -> str:
    body = {"apiVersion": "trainop.dev/v1alpha1", "kind": "TrainingJob",
            "metadata": {"name": name}, "spec": spec}  # fmt: skip
    return c.kubectl(
        "apply", "--dry-run=server", "-n", ns, "-f", "-", input=json.dumps(body), check=False
    )


def test_every_baseline_violation_is_refused_at_kubectl_apply_naming_the_field(
    crd: Cluster, ns: str, policy: str
) -> None:
    first = POD_SECURITY[0]
    # A new policy takes a moment to be enforced.
    wait_for("the policy enforced", lambda: "denied" in _apply(crd, ns, "x", first.spec()))
    wrong = []
    for case in POD_SECURITY:
        said = _apply(crd, ns, case.id, case.spec())
        if not (policy in said and case.field in said and case.also in said):
            wrong.append(f"{case.id}: {said.strip()[:400]}")
    assert wrong == [], "\n".join(wrong)
    assert "created (server dry run)" in _apply(crd, ns, "fine", tj("fine")["spec"])


@pytest.mark.parametrize(
    "case",
    [
        c
        for c in POD_SECURITY
        if c.id in ("host-network", "privileged-trainer", "host-path-checkpoint")
    ],
    ids=lambda c: c.id,
)
def test_without_the_policy_the_operator_refuses_and_creates_nothing(
    operator: Operator, ns: str, case: Case
) -> None:
    c = operator.cluster
    c.apply({"apiVersion": "trainop.dev/v1alpha1", "kind": "TrainingJob",
             "metadata": {"name": "deputy"}, "spec": case.spec()}, ns)  # fmt: skip
    st = wait_until(
        "PodSecurity", lambda: status(c, ns, "deputy"), lambda s: s.get("reason") == "PodSecurity"
    )
    cond = next(x for x in st["conditions"] if x["type"] == "SpecValid")
    assert cond["status"] == "False"
    assert case.field in cond["message"]
    assert f"security.podSecurityNamespaces.{ns}" in cond["message"]
    assert c.list("pods", ns) == []
    assert c.list("services", ns) == []
    assert c.list("networkpolicies", ns) == []


def test_each_job_gets_a_network_policy_letting_only_its_own_pods_in(
    operator: Operator, ns: str
) -> None:
    c = operator.cluster
    c.apply(tj("fenced", replicas=2), ns)
    until_running(c, ns, "fenced", 2)
    policy = c.get("networkpolicy", "fenced", ns)
    job = c.get("trainingjob", "fenced", ns)
    (owner,) = policy["metadata"]["ownerReferences"]
    assert owner["uid"] == job["metadata"]["uid"]  # deleted with the job
    own = {"matchLabels": {"trainop.dev/job-name": "fenced"}}
    spec = policy["spec"]
    assert spec["podSelector"] == own  # the store and every worker
    assert spec["policyTypes"] == ["Ingress"]  # DNS and the API server stay reachable
    from_own, metrics = spec["ingress"]
    assert from_own == {"from": [{"podSelector": own}]}
    assert metrics == {"ports": [{"port": 9400, "protocol": "TCP"}]}
    # The pods it covers are exactly the job's: the store and both workers.
    covered = c.list("pods", ns, "trainop.dev/job-name=fenced")
    assert sorted(p["metadata"]["name"] for p in covered) == [
        "fenced-rdzv",
        "fenced-worker-0",
        "fenced-worker-1",
    ]

"""The hostile corpus (tests/hostile.py) against the real API server and the real operator.

Every case the schema can judge is refused at `kubectl apply`, with the API server's
message naming the field, and nothing is stored. The cases only the cluster can judge
end Pending with SpecValid=False naming the field, with no pod or Service created,
and the operator stays up.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.cluster.conftest import ROOT, Cluster, Operator, wait_until
from tests.cluster.test_operator import status
from tests.hostile import AFTER_APPLY, REFUSED_AT_APPLY, Case

pytestmark = pytest.mark.cluster


def _job(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "trainop.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": spec,
    }


def test_every_hostile_spec_is_refused_at_kubectl_apply_naming_the_field(
    crd: Cluster, ns: str
) -> None:
    wrong: list[str] = []
    for case in REFUSED_AT_APPLY:
        said = crd.kubectl(
            "apply", "-n", ns, "-f", "-", input=json.dumps(_job(case.id, case.spec())), check=False
        )
        if case.field not in said or "created" in said:
            wrong.append(f"{case.id}: {said.strip()[:300]}")
    assert wrong == [], "\n".join(wrong)
    assert crd.list("trainingjobs", ns) == []


@pytest.mark.parametrize(("case", "reason"), AFTER_APPLY, ids=lambda c: getattr(c, "id", c))
def test_specs_only_the_cluster_can_judge_end_in_a_named_condition_with_nothing_created(
    operator: Operator, ns: str, case: Case, reason: str
) -> None:
    c = operator.cluster
    c.apply(_job("hostile", case.spec()), ns)
    st = wait_until(reason, lambda: status(c, ns, "hostile"), lambda s: s.get("reason") == reason)
    cond = next(x for x in st["conditions"] if x["type"] == "SpecValid")
    assert (cond["status"], cond["reason"]) == ("False", reason)
    assert case.field in cond["message"]
    assert st["phase"] == "Pending"
    # A job refused for good reads differently from one starting, in plain `kubectl get`.
    header, row = c.kubectl("get", "trainingjob", "hostile", "-n", ns).splitlines()
    assert "REASON" in header.split()
    assert reason in row.split()
    assert c.list("pods", ns) == []
    assert c.list("services", ns) == []
    assert operator.alive()


def test_the_pod_template_schema_is_the_api_servers_own(cluster: Cluster) -> None:
    """The committed schema (model and CRD) is what this API server's OpenAPI gives today."""
    res = subprocess.run(
        [sys.executable, str(ROOT / "hack" / "podspec_schema.py"), "--check"],
        env={**cluster.env, "KUBECTL": str(cluster.bins.kubectl)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr

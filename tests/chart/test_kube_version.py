"""The chart's kubeVersion promises only clusters that serve everything it renders."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.chart.helpers import CHART, MONITORING_ON, helm, template

# Every object the chart can render, with each option on.
ALL_ON = (
    *MONITORING_ON,
    "--set",
    "progressReporter.bindings[0].namespace=team-a,replicaCount=2,leaderElection.enabled=true",
)
# (apiVersion, kind) -> the first Kubernetes 1.x minor that serves it by default.
# Worker pods' native sidecars (restartPolicy: Always on an init container) are on by
# default from 1.29; ValidatingAdmissionPolicy went GA, at v1, in 1.30, and the
# pod-name claim of bound tokens the policy reads is also on by default from 1.30.
FIRST_SERVED = {
    ("v1", "ConfigMap"): 0,
    ("v1", "Service"): 0,
    ("v1", "ServiceAccount"): 0,
    ("apps/v1", "Deployment"): 9,
    ("policy/v1", "PodDisruptionBudget"): 21,
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): 8,
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): 8,
    ("rbac.authorization.k8s.io/v1", "Role"): 8,
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): 8,
    ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicy"): 30,
    ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicyBinding"): 30,
    # Served by the Prometheus Operator's CRDs, not by Kubernetes.
    ("monitoring.coreos.com/v1", "ServiceMonitor"): 0,
    ("monitoring.coreos.com/v1", "PodMonitor"): 0,
    ("monitoring.coreos.com/v1", "PrometheusRule"): 0,
}
NATIVE_SIDECARS = 29


def chart_floor() -> int:
    kube_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"]
    m = re.fullmatch(r">=\s*1\.(\d+)\.\d+(-0)?", kube_version)
    assert m, f"kubeVersion {kube_version!r} is not a plain '>=1.N.0-0' floor"
    return int(m[1])


def test_kube_version_floor_serves_every_rendered_object() -> None:
    rendered = {(o["apiVersion"], o["kind"]) for o in template(*ALL_ON).objects}
    unknown = rendered - FIRST_SERVED.keys()
    assert not unknown, f"add these to FIRST_SERVED: {sorted(unknown)}"
    needed = max(NATIVE_SIDECARS, *(FIRST_SERVED[k] for k in rendered))
    assert chart_floor() >= needed, (
        f"Chart.yaml promises 1.{chart_floor()}, but what it renders needs 1.{needed}"
    )


@pytest.mark.parametrize(
    ("kube_version", "installs"),
    [
        pytest.param("1.29.9", False, id="1.29: no ValidatingAdmissionPolicy v1"),
        pytest.param("1.30.0", True, id="1.30"),
        pytest.param("1.34.4", True, id="1.34 (the local control plane)"),
    ],
)
def test_helm_refuses_clusters_older_than_the_floor(kube_version: str, installs: bool) -> None:
    result = helm("template", "trainop", str(CHART), "--kube-version", kube_version, *ALL_ON)
    assert (result.returncode == 0) == installs, result.stderr
    if not installs:
        assert "incompatible with Kubernetes" in result.stderr

"""The chart on a real API server (RBAC on): install, least privilege, the real
operator under the chart's ServiceAccount, uninstall."""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.chart.helpers import CHART
from tests.chart.kube import (
    Release,
    bare_cluster,
    install,
    lease_holder,
    operator_as_sa,
    phase,
    refusals,
    running_workers,
    training_job,
    uninstall,
)
from tests.cluster.conftest import Cluster, wait_for

pytestmark = pytest.mark.cluster
CRD = "trainingjobs.trainop.dev"


@pytest.fixture(scope="module")
def clusterwide(crd: Cluster) -> Iterator[Release]:
    release = install(crd)
    yield release
    uninstall(release)


@pytest.fixture(scope="module")
def team_namespaces(crd: Cluster) -> Iterator[tuple[str, str]]:
    suffix = uuid.uuid4().hex[:6]
    names = (f"team-a-{suffix}", f"team-b-{suffix}")
    for name in names:
        crd.kubectl("create", "namespace", name)
    wait_for("service accounts", lambda: crd.get_or_none("sa", "default", names[1]))
    yield names
    for name in names:
        crd.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def namespaced(crd: Cluster, team_namespaces: tuple[str, str]) -> Iterator[Release]:
    watch = ",".join(team_namespaces)
    release = install(crd, "--set", f"watchNamespaces={{{watch}}}")
    yield release
    uninstall(release)


def test_install_creates_a_locked_down_deployment_that_rolls_out(clusterwide: Release) -> None:
    c = clusterwide.cluster
    deployment = clusterwide.deployment()
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == clusterwide.fullname
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    (container,) = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    # kwok runs no containers but plays the kubelet: the pod is scheduled, reported
    # ready, and the Deployment completes its rollout on the real controllers.
    c.kubectl(
        "rollout",
        "status",
        f"deployment/{clusterwide.fullname}",
        "-n",
        clusterwide.namespace,
        "--timeout=90s",
    )
    sa = c.get("serviceaccount", clusterwide.fullname, clusterwide.namespace)
    assert sa["metadata"]["labels"]["app.kubernetes.io/instance"] == clusterwide.name
    svc = c.get("service", f"{clusterwide.fullname}-metrics", clusterwide.namespace)
    assert svc["spec"]["ports"][0]["targetPort"] == "metrics"
    assert c.list("configmaps", clusterwide.namespace, "grafana_dashboard=1")


# What the operator does (kube/client.py, reconcile.py) and Kopf does for it.
NEEDED = [
    ("get", "trainingjobs.trainop.dev"),
    ("list", "trainingjobs.trainop.dev"),
    ("watch", "trainingjobs.trainop.dev"),
    ("delete", "trainingjobs.trainop.dev"),
    ("update", "trainingjobs.trainop.dev/status"),
    ("list", "pods"),
    ("watch", "pods"),
    ("create", "pods"),
    ("delete", "pods"),
    ("patch", "pods"),
    ("get", "services"),
    ("list", "services"),
    ("watch", "services"),
    ("create", "services"),
    ("get", "persistentvolumeclaims"),
    ("create", "events"),
    ("create", "networkpolicies.networking.k8s.io"),
    # Kueue as an external framework, and gang scheduling.
    ("get", "workloads.kueue.x-k8s.io"),
    ("list", "workloads.kueue.x-k8s.io"),
    ("watch", "workloads.kueue.x-k8s.io"),
    ("create", "workloads.kueue.x-k8s.io"),
    ("delete", "workloads.kueue.x-k8s.io"),
    ("patch", "workloads.kueue.x-k8s.io"),
    ("patch", "workloads.kueue.x-k8s.io/status"),
    ("get", "podgroups.scheduling.volcano.sh"),
    ("create", "podgroups.scheduling.volcano.sh"),
    ("get", "podgroups.scheduling.x-k8s.io"),
    ("create", "podgroups.scheduling.x-k8s.io"),
]
CLUSTER_READS = [
    ("list", "nodes"),
    ("watch", "nodes"),
    # A namespace being deleted is left alone (its pods go before its jobs).
    ("list", "namespaces"),
    ("watch", "namespaces"),
    ("list", "customresourcedefinitions.apiextensions.k8s.io"),
    ("watch", "customresourcedefinitions.apiextensions.k8s.io"),
    ("get", "resourceflavors.kueue.x-k8s.io"),
    ("get", "priorityclasses.scheduling.k8s.io"),
]
FORBIDDEN = [
    ("get", "secrets"),
    ("list", "secrets"),
    ("watch", "secrets"),
    ("*", "*"),
    ("*", "pods"),
    ("create", "trainingjobs.trainop.dev"),
    ("update", "trainingjobs.trainop.dev"),
    ("patch", "trainingjobs.trainop.dev"),  # spec.suspend is the user's, not trainop's
    ("update", "workloads.kueue.x-k8s.io"),
    ("create", "clusterqueues.kueue.x-k8s.io"),
    ("delete", "podgroups.scheduling.volcano.sh"),
    ("patch", "trainingjobs.trainop.dev/status"),
    ("get", "pods/log"),
    ("create", "pods/exec"),
    ("update", "pods"),
    ("delete", "services"),
    ("delete", "networkpolicies.networking.k8s.io"),
    ("update", "networkpolicies.networking.k8s.io"),
    ("get", "configmaps"),
    ("create", "persistentvolumeclaims"),
    ("create", "deployments.apps"),
    ("create", "serviceaccounts/token"),
    ("patch", "nodes"),
    ("delete", "nodes"),
    ("get", "nodes"),
    ("create", "customresourcedefinitions.apiextensions.k8s.io"),
    ("delete", "customresourcedefinitions.apiextensions.k8s.io"),
    ("create", "clusterroles.rbac.authorization.k8s.io"),
    ("create", "rolebindings.rbac.authorization.k8s.io"),
    ("delete", "namespaces"),
    ("create", "leases.coordination.k8s.io"),
    ("update", "leases.coordination.k8s.io"),
]


def test_cluster_wide_rbac_allows_what_the_operator_needs_everywhere(
    clusterwide: Release, team_namespaces: tuple[str, str]
) -> None:
    for ns in ("default", team_namespaces[0]):
        denied = [(v, r) for v, r in NEEDED if not clusterwide.can_i(v, r, ns)]
        assert denied == [], f"the chart's role lacks these in {ns}"
    denied = [(v, r) for v, r in CLUSTER_READS if not clusterwide.can_i(v, r)]
    assert denied == []
    assert not clusterwide.can_i("get", "namespaces")


def test_cluster_wide_rbac_forbids_secrets_wildcards_and_the_rest(clusterwide: Release) -> None:
    allowed = [(v, r) for v, r in FORBIDDEN if clusterwide.can_i(v, r, "default")]
    assert allowed == [], "the chart's role grants more than the operator uses"


def test_namespaced_rbac_stops_at_the_watched_namespaces(
    namespaced: Release, team_namespaces: tuple[str, str]
) -> None:
    for ns in team_namespaces:
        assert [(v, r) for v, r in NEEDED if not namespaced.can_i(v, r, ns)] == []
    elsewhere = [(v, r) for v, r in NEEDED if namespaced.can_i(v, r, "default")]
    assert elsewhere == [], "namespaced mode leaks rights outside watchNamespaces"
    assert not namespaced.can_i("list", "trainingjobs.trainop.dev")  # all namespaces
    assert [(v, r) for v, r in CLUSTER_READS if not namespaced.can_i(v, r)] == []
    # Kopf's namespace observer (see rbac.yaml); cluster-wide mode has no use for it.
    assert namespaced.can_i("watch", "namespaces")
    assert [(v, r) for v, r in FORBIDDEN if namespaced.can_i(v, r, team_namespaces[0])] == []


def test_the_operator_runs_a_job_as_the_chart_s_service_account(
    clusterwide: Release, team_namespaces: tuple[str, str], tmp_path: Path
) -> None:
    """The proof that the role is sufficient: the real operator, started with the
    installed Deployment's arguments and authenticated as its ServiceAccount,
    runs a TrainingJob through creation, a worker failure and status updates."""
    c = clusterwide.cluster
    ns = team_namespaces[0]
    with operator_as_sa(clusterwide, tmp_path) as op:
        c.apply(training_job("sa-proof"), ns)
        pods = running_workers(c, ns, "sa-proof", 2)
        phase(c, ns, "sa-proof", "Running")
        # A worker dies: the operator patches, deletes and recreates pods and writes
        # the failure into status, all under the chart's role.
        c.kubectl(
            "annotate", "pod", pods[0]["metadata"]["name"], "-n", ns,
            "kwok.trainop.dev/exit-code=1",
        )  # fmt: skip

        def restarted() -> dict[str, object] | None:
            status = c.get("trainingjob", "sa-proof", ns).get("status") or {}
            return status if status.get("restarts") == 1 else None

        wait_for("the failure counted in status", restarted, timeout=60)
        running_workers(c, ns, "sa-proof", 2)
        assert any(e["reason"] == "WorkerFailed" for e in c.events(ns, "sa-proof"))
        log = op.text()
        assert op.proc.poll() is None, log[-3000:]
    # Kopf and the operator log every call they may not make: there must be none.
    assert refusals(log) == []


def test_the_namespaced_operator_runs_a_job_in_its_namespace_only(
    namespaced: Release, team_namespaces: tuple[str, str], tmp_path: Path
) -> None:
    c = namespaced.cluster
    watched, _ = team_namespaces
    outside = f"outside-{uuid.uuid4().hex[:6]}"
    c.kubectl("create", "namespace", outside)
    try:
        with operator_as_sa(namespaced, tmp_path) as op:
            c.apply(training_job("in-scope", replicas=1), watched)
            c.apply(training_job("out-of-scope", replicas=1), outside)
            # Kopf may list namespaces, so it starts at once instead of after a minute
            # of refused retries.
            running_workers(c, watched, "in-scope", 1, timeout=30)
            phase(c, watched, "in-scope", "Running")
            log = op.text()
            assert op.proc.poll() is None, log[-3000:]
        # Never touched: no status, no pods.
        assert not c.get("trainingjob", "out-of-scope", outside).get("status")
        assert c.list("pods", outside) == []
        assert refusals(log) == []
    finally:
        c.kubectl("delete", "namespace", outside, "--wait=false", check=False)


@pytest.mark.slow
def test_helm_installs_the_crd_and_uninstall_keeps_it_and_the_jobs(tmp_path: Path) -> None:
    """On a cluster of its own, since the session's shared one has the CRD already:
    the CRD there comes from helm's crds/, and helm never deletes it."""
    with bare_cluster(tmp_path) as c:
        assert c.kubectl("get", "crd", CRD, "--ignore-not-found") == ""
        release = install(c)
        c.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{CRD}")
        installed = json.loads(c.kubectl("get", "crd", CRD, "-o", "json", "--show-managed-fields"))
        # Its spec was written by helm, and by nobody else.
        writers = {
            f["manager"]
            for f in installed["metadata"]["managedFields"]
            if "f:spec" in f.get("fieldsV1", {})
        }
        assert writers == {"helm"}
        chart_crd = yaml.safe_load((CHART / "crds" / "trainop.dev_trainingjobs.yaml").read_text())
        assert installed["spec"]["versions"] == chart_crd["spec"]["versions"]
        c.apply(training_job("survivor", replicas=1), release.namespace)
        # The README's upgrade step, with a CRD that changed since: helm co-owns the
        # fields it applied, so only --force-conflicts takes them over.
        newer = copy.deepcopy(chart_crd)
        newer["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["description"] = "newer"
        refused = c.kubectl(
            "apply", "--server-side", "-f", "-", input=json.dumps(newer), check=False
        )
        assert 'conflict with "helm"' in refused
        c.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=json.dumps(newer))
        served = json.loads(c.kubectl("get", "crd", CRD, "-o", "json"))["spec"]["versions"][0]
        assert served["schema"]["openAPIV3Schema"]["description"] == "newer"
        result = release.helm(
            "upgrade", release.name, str(CHART), "--reuse-values",
            "--set", "replicaCount=2,leaderElection.enabled=true",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert release.deployment()["spec"]["replicas"] == 2
        assert c.get_or_none("role", f"{release.fullname}-leader-election", release.namespace)
        result = release.helm("uninstall", release.name, "--wait")
        assert result.returncode == 0, result.stderr
        assert c.get_or_none("deployment", release.fullname, release.namespace) is None
        assert c.kubectl("get", "clusterrole", release.fullname, "--ignore-not-found") == ""
        # Helm never deletes what it installed from crds/: the TrainingJobs survive.
        assert (
            c.kubectl("get", "crd", CRD, "-o", "name").strip()
            == f"customresourcedefinition.apiextensions.k8s.io/{CRD}"
        )
        assert c.get_or_none("trainingjob", "survivor", release.namespace) is not None


def test_two_replicas_one_active_and_the_standby_takes_over(
    crd: Cluster, team_namespaces: tuple[str, str], tmp_path: Path
) -> None:
    """replicaCount=2 with leader election, as two real operator processes under the
    chart's ServiceAccount: one leads, the other stays idle until the leader dies."""
    c = crd
    release = install(c, "--set", "replicaCount=2,leaderElection.enabled=true")
    ns = team_namespaces[1]
    try:
        with operator_as_sa(release, tmp_path, tag="replica-a") as a:
            wait_for("replica-a to lead", lambda: lease_holder(release) == "replica-a")
            with operator_as_sa(release, tmp_path, tag="replica-b") as b:
                c.apply(training_job("ha-first", replicas=1), ns)
                running_workers(c, ns, "ha-first", 1)
                phase(c, ns, "ha-first", "Running")
                assert lease_holder(release) == "replica-a"
                # The standby serves metrics (and so its probes) but reconciles nothing.
                assert "trainop_operator_jobs{" not in b.metrics()
                assert "trainop_operator_jobs{" in a.metrics()
                # What the probes ask: both healthy, each saying what it is.
                assert a.healthz() == (200, "leader")
                assert b.healthz() == (200, "standby")
                a.kill()
                # b takes the lease once it has seen it unchanged for 15 s.
                wait_for("replica-b to lead", lambda: lease_holder(release) == "replica-b", 45)
                c.apply(training_job("ha-second", replicas=1), ns)
                running_workers(c, ns, "ha-second", 1)
                phase(c, ns, "ha-second", "Running")
                log = b.text()
                assert b.proc.poll() is None, log[-3000:]
        assert refusals(log) == []
    finally:
        uninstall(release)


def test_monitoring_objects_fail_the_install_on_a_cluster_without_prometheus_operator(
    crd: Cluster,
) -> None:
    # The local API server serves no monitoring.coreos.com: helm reads that from discovery.
    name = f"mon-{uuid.uuid4().hex[:6]}"
    crd.kubectl("create", "namespace", name)
    try:
        release = Release(crd, name, name, ())
        result = release.helm(
            "install", name, str(CHART), "--set", "monitoring.podMonitor.enabled=true"
        )
        assert result.returncode != 0
        assert "needs the Prometheus Operator CRDs" in result.stderr
        assert release.helm("status", name).returncode != 0  # nothing was installed
        assert crd.get_or_none("deployment", f"{name}-trainop", name) is None
    finally:
        crd.kubectl("delete", "namespace", name, "--wait=false", check=False)

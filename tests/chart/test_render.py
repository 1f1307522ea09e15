"""The chart as the real helm lints and renders it, in its main variants."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.helpers import (
    CHART,
    MONITORING_API,
    MONITORING_ON,
    NAMESPACED,
    ROOT,
    Obj,
    Rendered,
    dashboards,
    helm,
    template,
    template_error,
)
from tests.factories import JOB, spec
from trainop.core.build import build_store_pod, build_worker_pod
from trainop.core.config import OperatorConfig

VARIANTS = {
    "default": (),
    "namespaced": NAMESPACED,
    "monitoring": MONITORING_ON,
    "ha": ("--set", "replicaCount=2,leaderElection.enabled=true"),
}


@pytest.mark.parametrize("args", VARIANTS.values(), ids=VARIANTS.keys())
def test_helm_lint_strict(args: tuple[str, ...]) -> None:
    # lint has no --api-versions: monitoring.force stands in for the Prometheus Operator.
    lint_args = [a.replace(MONITORING_API, "") for a in args if a != "--api-versions"]
    lint_args = [a for a in lint_args if a]
    if args is MONITORING_ON:
        lint_args += ["--set", "monitoring.force=true"]
    result = helm("lint", "--strict", str(CHART), *lint_args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


def _operator(r: Rendered) -> Obj:
    return r.one("Deployment")["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("args", VARIANTS.values(), ids=VARIANTS.keys())
def test_the_operator_runs_locked_down(args: tuple[str, ...]) -> None:
    r = template(*args)
    pod = r.one("Deployment")["spec"]["template"]["spec"]
    container = _operator(r)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert set(container["resources"]) == {"requests", "limits"}
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]
    # Probes ask Kopf's liveness endpoint, which the operator is told to serve; a
    # standby waiting for the Lease runs no Kopf yet, so with leader election they
    # ask the /healthz of the metrics server that every replica starts first.
    health = next(p for p in container["ports"] if p["name"] == "health")["containerPort"]
    assert f"--liveness=http://0.0.0.0:{health}/healthz" in container["args"]
    want = {"path": "/healthz", "port": "health"}
    if "--leader-elect" in container["args"]:
        want = {"path": "/healthz", "port": "metrics"}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == want
    assert container["args"][0] == "operator"
    assert pod["serviceAccountName"] == r.one("ServiceAccount")["metadata"]["name"]


def test_image_defaults_to_the_app_version_and_serves_as_the_sidecar() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    container = _operator(template())
    assert container["image"] == f"ghcr.io/trainop/trainop:{chart['appVersion']}"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["TRAINOP_EXPORTER_IMAGE"] == container["image"]
    assert env["TRAINOP_METRICS_PORT"] == "8080"
    digest = "sha256:" + "a" * 64
    pinned = _operator(template("--set", f"image.digest={digest}"))
    assert pinned["image"] == f"ghcr.io/trainop/trainop@{digest}"


def test_cluster_wide_mode_has_one_cluster_role_and_no_namespace_flags() -> None:
    r = template()
    assert sorted(o["metadata"]["name"] for o in r.of_kind("ClusterRole")) == [
        "trainop",
        "trainop-progress-reporter",
    ]
    assert r.of_kind("Role") == []
    assert not [a for a in _operator(r)["args"] if a.startswith("--namespace")]
    assert r.one("Deployment")["spec"]["strategy"] == {"type": "Recreate"}


def test_namespaced_mode_has_a_role_per_namespace_and_only_reads_cluster_wide() -> None:
    r = template(*NAMESPACED, "--set", "progressReporter.enabled=false")
    assert sorted(o["metadata"]["namespace"] for o in r.of_kind("Role")) == ["team-a", "team-b"]
    assert sorted(o["metadata"]["namespace"] for o in r.of_kind("RoleBinding")) == [
        "team-a",
        "team-b",
    ]
    (cluster_role,) = r.of_kind("ClusterRole")
    cluster_resources = {res for rule in cluster_role["rules"] for res in rule["resources"]}
    assert cluster_resources == {
        "nodes",
        "customresourcedefinitions",
        "namespaces",
        "resourceflavors",  # Kueue's admitted flavors
        "priorityclasses",  # a queued job's priority value
    }
    for rule in cluster_role["rules"]:
        assert set(rule["verbs"]) <= {"get", "list", "watch"}
    args = _operator(r)["args"]
    assert "--namespace=team-a" in args
    assert "--namespace=team-b" in args
    # The sidecars are scraped where the jobs run.
    assert r.of_kind("PodMonitor") == []
    pm = template(*NAMESPACED, *MONITORING_ON).one("PodMonitor")
    assert pm["spec"]["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}


@pytest.mark.parametrize("args", VARIANTS.values(), ids=VARIANTS.keys())
def test_rbac_has_no_wildcards_and_never_touches_secrets(args: tuple[str, ...]) -> None:
    r = template(*args)
    rules = [
        rule for kind in ("ClusterRole", "Role") for o in r.of_kind(kind) for rule in o["rules"]
    ]
    assert rules
    for rule in rules:
        for key in ("apiGroups", "resources", "verbs", "resourceNames"):
            assert "*" not in rule.get(key, []), rule
        assert not {"secrets", "configmaps", "serviceaccounts"} & set(rule["resources"]), rule
        assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), rule


def test_progress_reporter_may_only_patch_pods_and_is_bound_where_asked() -> None:
    r = template("--set", "progressReporter.bindings[0].namespace=team-a")
    (role,) = [o for o in r.of_kind("ClusterRole") if o["metadata"]["name"].endswith("-reporter")]
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["patch"]}]
    (binding,) = [o for o in r.of_kind("RoleBinding") if o["metadata"]["namespace"] == "team-a"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "default", "namespace": "team-a"}
    ]


@pytest.mark.parametrize(
    ("args", "accounts"),
    [
        pytest.param((), None, id="no-bindings-no-policy"),
        pytest.param(
            ("--set", "progressReporter.bindings[0].namespace=team-a"),
            ["system:serviceaccount:team-a:default"],
            id="one-binding",
        ),
        pytest.param(
            (
                "--set",
                "progressReporter.bindings[0].namespace=team-a",
                "--set",
                "progressReporter.bindings[1].namespace=team-b,"
                "progressReporter.bindings[1].serviceAccount=trainer",
            ),
            ["system:serviceaccount:team-a:default", "system:serviceaccount:team-b:trainer"],
            id="two-bindings",
        ),
        pytest.param(
            (
                "--set",
                "progressReporter.bindings[0].namespace=team-a",
                "--set",
                "progressReporter.ownPodOnly=false",
            ),
            None,
            id="opted-out",
        ),
    ],
)
def test_bound_reporters_are_held_to_their_own_pod_by_an_admission_policy(
    args: tuple[str, ...], accounts: list[str] | None
) -> None:
    r = template(*args)

    def reporters(kind: str) -> list[Any]:
        return [o for o in r.of_kind(kind) if o["metadata"]["name"].endswith("progress-reporter")]

    policies = reporters("ValidatingAdmissionPolicy")
    if accounts is None:
        assert policies == []
        assert reporters("ValidatingAdmissionPolicyBinding") == []
        return
    (policy,) = policies
    (binding,) = reporters("ValidatingAdmissionPolicyBinding")
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    (cond,) = policy["spec"]["matchConditions"]
    assert cond["expression"] == f"request.userInfo.username in {json.dumps(accounts)}"


def test_ha_mode_elects_a_leader_over_a_lease_in_the_release_namespace() -> None:
    r = template(*VARIANTS["ha"])
    deployment = r.one("Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    container = _operator(r)
    assert "--leader-elect" in container["args"]
    assert "--lease-name=trainop" in container["args"]
    env = {e["name"]: e for e in container["env"]}
    # The CLI puts the Lease in $POD_NAMESPACE and names its holder after $POD_NAME.
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert r.one("PodDisruptionBudget")["spec"]["minAvailable"] == 1
    role = r.one("Role", "-leader-election")
    assert role["metadata"]["namespace"] == "trainop-system"
    assert role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": ["trainop"],
            "verbs": ["get", "update"],
        },
    ]
    assert r.one("RoleBinding", "-leader-election")["roleRef"]["name"] == "trainop-leader-election"
    assert template().of_kind("Role") == []


def test_several_replicas_without_peering_are_refused() -> None:
    err = template_error("--set", "replicaCount=2")
    assert "replicaCount > 1 needs leaderElection.enabled=true" in err


@pytest.mark.parametrize("kind", ["ServiceMonitor", "PodMonitor", "PrometheusRule"])
def test_monitoring_objects_fail_loudly_without_the_prometheus_operator(kind: str) -> None:
    value = f"monitoring.{kind[0].lower()}{kind[1:]}.enabled"
    err = template_error("--set", f"{value}=true")
    assert f"{value}=true needs the Prometheus Operator CRDs" in err
    forced = template("--set", f"{value}=true,monitoring.force=true")
    assert len(forced.of_kind(kind)) == 1


def test_monitoring_on_renders_every_monitoring_object() -> None:
    r = template(*MONITORING_ON)
    assert r.one("ServiceMonitor")
    assert r.one("PodMonitor")
    assert r.one("PrometheusRule")["spec"]["groups"]
    assert template().of_kind("ServiceMonitor") == []


def selects(selector: Obj, labels: dict[str, str]) -> bool:
    """A metav1.LabelSelector, evaluated the way the API server does."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        held = {
            "In": labels.get(key) in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not held:
            return False
    return True


def in_namespaces(selector: Obj, namespace: str) -> bool:
    return bool(selector.get("any")) or namespace in selector.get("matchNames", [])


def container_ports(pod_spec: Obj) -> set[str]:
    """Named ports of every container, native sidecars (restartable init containers) too."""
    containers = pod_spec.get("containers", []) + pod_spec.get("initContainers", [])
    return {p["name"] for ctr in containers for p in ctr.get("ports", []) if "name" in p}


@pytest.mark.parametrize("args", [(), NAMESPACED], ids=["cluster-wide", "namespaced"])
def test_the_service_monitor_scrapes_the_operator_through_its_service(
    args: tuple[str, ...],
) -> None:
    r = template(*MONITORING_ON, *args)
    sm, svc, deployment = r.one("ServiceMonitor"), r.one("Service", "-metrics"), r.one("Deployment")
    assert selects(sm["spec"]["selector"], svc["metadata"]["labels"])
    assert in_namespaces(sm["spec"]["namespaceSelector"], svc["metadata"]["namespace"])
    (endpoint,) = sm["spec"]["endpoints"]
    (port,) = [p for p in svc["spec"]["ports"] if p["name"] == endpoint["port"]]
    # The Service reaches the operator pods, on a port their container names.
    pod = deployment["spec"]["template"]
    assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert port["targetPort"] in container_ports(pod["spec"])


@pytest.mark.parametrize("args", [(), NAMESPACED], ids=["cluster-wide", "namespaced"])
def test_the_pod_monitor_scrapes_the_sidecar_of_the_worker_pods_the_operator_builds(
    args: tuple[str, ...],
) -> None:
    pm = template(*MONITORING_ON, *args).one("PodMonitor")
    job_spec = spec()
    worker = build_worker_pod(JOB, job_spec, 0, 0, OperatorConfig())
    rdzv_store = build_store_pod(JOB, job_spec)
    assert selects(pm["spec"]["selector"], worker["metadata"]["labels"])
    assert not selects(pm["spec"]["selector"], rdzv_store["metadata"]["labels"])
    # JOB runs in team-a, one of NAMESPACED's watched namespaces.
    assert in_namespaces(pm["spec"]["namespaceSelector"], worker["metadata"]["namespace"])
    (endpoint,) = pm["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] in container_ports(worker["spec"])
    assert endpoint["port"] not in container_ports(rdzv_store["spec"])


def test_dashboards_are_configmaps_with_the_configurable_label_and_the_json_verbatim() -> None:
    r = template(
        "--set", "dashboards.label=my_dash,dashboards.labelValue=yes,dashboards.namespace=grafana"
    )
    maps = {o["metadata"]["name"]: o for o in r.of_kind("ConfigMap")}
    assert set(maps) == {f"trainop-dashboard-{name}" for name in dashboards()}
    for name, dash in dashboards().items():
        cm = maps[f"trainop-dashboard-{name}"]
        assert cm["metadata"]["labels"]["my_dash"] == "yes"
        assert cm["metadata"]["namespace"] == "grafana"
        assert json.loads(cm["data"][f"{name}.json"]) == dash
    default = template().of_kind("ConfigMap")
    assert all(cm["metadata"]["labels"]["grafana_dashboard"] == "1" for cm in default)
    assert template("--set", "dashboards.enabled=false").of_kind("ConfigMap") == []


def test_dashboards_have_unique_uids_and_a_datasource_variable() -> None:
    uids = [d["uid"] for d in dashboards().values()]
    assert len(set(uids)) == len(uids) == 2
    job = dashboards()["trainingjob"]
    variables = [v["name"] for v in job["templating"]["list"]]
    assert variables == ["datasource", "namespace", "trainingjob"]


def test_every_object_carries_the_recommended_labels() -> None:
    for obj in template(*MONITORING_ON, *VARIANTS["ha"]).objects:
        labels = obj["metadata"]["labels"]
        for key in (
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/version",
        ):
            assert key in labels, f"{obj['kind']} {obj['metadata']['name']} lacks {key}"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"


def test_the_chart_crd_is_the_repository_crd_byte_for_byte() -> None:
    """crds/ is the single source; the chart carries an exact copy of the directory
    (helm cannot read files outside the chart). After changing crds/:
    cp crds/*.yaml charts/trainop/crds/"""
    for source in sorted((ROOT / "crds").glob("*.yaml")):
        copy = CHART / "crds" / source.name
        assert copy.exists(), f"{copy} missing: cp {source} {copy}"
        assert copy.read_bytes() == source.read_bytes(), f"{copy} drifted: cp {source} {copy}"
    ours = {p.name for p in (ROOT / "crds").glob("*.yaml")}
    assert {p.name for p in (CHART / "crds").iterdir()} == ours


def _schema_paths(schema: dict[str, Any], prefix: str = "") -> dict[str, dict[str, Any]]:
    out = {}
    for key, sub in schema.get("properties", {}).items():
        path = f"{prefix}{key}"
        out[path] = sub
        out.update(_schema_paths(sub, f"{path}."))
    return out


def _value_paths(values: dict[str, Any], schema: dict[str, Any], prefix: str = "") -> list[str]:
    """Paths of values.yaml, down to the maps the schema leaves free (labels, resources...)."""
    out = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        out.append(path)
        sub = schema.get("properties", {}).get(key, {})
        if isinstance(value, dict) and "properties" in sub:
            out.extend(_value_paths(value, sub, f"{path}."))
    return out


def test_every_value_is_in_the_schema_with_a_description() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    described = _schema_paths(schema)
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for path in _value_paths(values, schema):
        assert path in described, f"values.yaml {path} is not in values.schema.json"
    for path, sub in described.items():
        assert sub.get("description"), f"values.schema.json {path} has no description"


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("replicaCount=two", "replicaCount"),
        ("watchNamespaces={Team_A}", "watchNamespaces"),
        ("monitoring.prometheusRule.idleUtilization=5", "idleUtilization"),
        ("monitoring.prometheusRule.throttleReasons={overheated}", "throttleReasons"),
        ("unknownKey=1", "unknownKey"),
    ],
)
def test_the_schema_rejects_wrong_values(bad: str, message: str) -> None:
    assert message in template_error("--set", bad)


def test_notes_give_ready_commands() -> None:
    result = helm(
        "install",
        "trainop",
        str(CHART),
        "--dry-run=client",
        "--namespace",
        "trainop-system",
        *NAMESPACED,
    )
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("NOTES:", 1)[1]
    assert "kubectl -n trainop-system rollout status deployment/trainop" in notes
    assert "kubectl -n team-a get trainingjob hello -w" in notes
    # The inline job is a valid TrainingJob for the CRD's required fields.
    job = yaml.safe_load(notes.split("<<'YAML'\n", 1)[1].split("\nYAML\n", 1)[0])
    assert job["kind"] == "TrainingJob"
    assert {"image", "entrypoint"} <= set(job["spec"])


def test_the_chart_packages(tmp_path: Path) -> None:
    result = helm("package", str(CHART), "--destination", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "trainop-0.1.0.tgz").exists()


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ("nodeLostSeconds", "node_lost_seconds"),
        ("resyncSeconds", "resync_seconds"),
        ("pendingTimeoutSeconds", "pending_timeout_seconds"),
    ],
)
def test_operator_tuning_values_reach_the_operators_config(
    value: str, field: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trainop.handlers.operator import config_from_env

    env = {e["name"]: e.get("value") for e in _operator(template())["env"]}
    monkeypatch.setattr("os.environ", {k: v for k, v in env.items() if v is not None})
    default = getattr(config_from_env(), field)
    env = {
        e["name"]: e.get("value")
        for e in _operator(template("--set", f"operator.{value}=1234"))["env"]
    }
    monkeypatch.setattr("os.environ", {k: v for k, v in env.items() if v is not None})
    assert getattr(config_from_env(), field) == 1234 != default


def test_capacity_check_off_reaches_the_operators_config(monkeypatch: pytest.MonkeyPatch) -> None:
    from trainop.handlers.operator import config_from_env

    for flag, expected in (("true", True), ("false", False)):
        container = _operator(template("--set", f"operator.capacityCheck={flag}"))
        env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
        monkeypatch.setattr("os.environ", env)
        assert config_from_env().capacity_check is expected


@pytest.mark.parametrize(
    ("args", "exempt", "env"),
    [
        pytest.param((), None, {"TRAINOP_POD_SECURITY": "baseline"}, id="default-baseline"),
        pytest.param(
            (
                "--set",
                "security.podSecurityNamespaces.rdma=privileged,"
                "security.podSecurityNamespaces.vault=restricted",
            ),
            ["rdma"],
            {
                "TRAINOP_POD_SECURITY": "baseline",
                "TRAINOP_POD_SECURITY_NAMESPACES": "rdma=privileged,vault=restricted",
            },
            id="per-namespace",
        ),
        pytest.param(
            ("--set", "security.podSecurity=privileged"),
            "no-policy",
            {"TRAINOP_POD_SECURITY": "privileged"},
            id="privileged-everywhere",
        ),
    ],
)
def test_pod_security_is_a_policy_at_apply_and_the_operators_setting(
    args: tuple[str, ...], exempt: list[str] | str | None, env: dict[str, str]
) -> None:
    r = template(*args)
    container = _operator(r)
    given = {e["name"]: e.get("value") for e in container["env"]}
    assert {k: given.get(k) for k in env} == env
    policies = [
        o
        for o in r.of_kind("ValidatingAdmissionPolicy")
        if o["metadata"]["name"].endswith("pod-security")
    ]
    if exempt == "no-policy":
        assert policies == []
        return
    (policy,) = policies
    rules = policy["spec"]["matchConstraints"]["resourceRules"]
    assert rules == [
        {
            "apiGroups": ["trainop.dev"],
            "apiVersions": ["*"],
            "operations": ["CREATE", "UPDATE"],
            "resources": ["trainingjobs"],
        }
    ]
    selector = policy["spec"]["matchConstraints"].get("namespaceSelector")
    if exempt is None:
        assert selector is None
    else:
        (expr,) = selector["matchExpressions"]
        assert (expr["operator"], expr["values"]) == ("NotIn", exempt)
    # Every message names the field it is about.
    assert all(v["message"].startswith("spec.") for v in policy["spec"]["validations"])


@pytest.mark.parametrize(
    ("value", "metrics_from"), [("", None), ("monitoring", "monitoring")], ids=["any", "one-ns"]
)
def test_network_policy_settings_reach_the_operator(value: str, metrics_from: str | None) -> None:
    r = template("--set", f"security.networkPolicy.metricsNamespace={value}")
    env = {e["name"]: e.get("value") for e in _operator(r)["env"]}
    assert env["TRAINOP_NETWORK_POLICY"] == "true"
    assert env["TRAINOP_METRICS_NAMESPACE"] == (metrics_from or "")
    off = template("--set", "security.networkPolicy.enabled=false")
    assert {e["name"]: e.get("value") for e in _operator(off)["env"]}["TRAINOP_NETWORK_POLICY"] == (
        "false"
    )

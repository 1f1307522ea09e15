"""The PrometheusRule's alerts, checked and unit-tested by the real promtool."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from tests.chart.helpers import (
    CHART,
    MONITORING_ON,
    RECORDING,
    Rendered,
    helm,
    promtool,
    recording_groups,
    rule_groups,
    run,
    template,
    write_rule_file,
)
from tests.chart.promql import reads
from trainop.exporter import names

HERE = Path(__file__).parent
# What the issue asks the rules to catch; each must have its promtool unit test.
REQUIRED = {
    "TrainopTrainingStalled",
    "TrainopTrainingHung",
    "TrainopGPUIdle",
    "TrainopRestartStorm",
    "TrainopJobRestartStorm",
    "TrainopGPUThrottled",
    "TrainopJobFailed",
    "TrainopGPUXidError",
    "TrainopGPUECCUncorrected",
    "TrainopGPUDown",
    "TrainopExporterDown",
    "TrainopOperatorDown",
}
README = CHART / "README.md"
RECORDING_ON = (*MONITORING_ON, *RECORDING)
# The per-job usage records (issue 15), each with its promtool test in recording_test.yaml.
RECORDS = {
    "trainingjob:trainop_gpu_seconds:rate5m",
    "trainingjob:trainop_gpu_idle_seconds:rate5m",
    "trainingjob:trainop_gpu_energy_joules:rate5m",
    "trainingjob:trainop_gpu_energy_joules_per_step:ratio5m",
}


def test_promtool_check_rules_accepts_the_rendered_rule(tmp_path: Path) -> None:
    rules = write_rule_file(tmp_path / "rules.yaml")
    result = run([promtool(), "check", "rules", rules])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(REQUIRED)} rules found" in result.stdout


def test_every_alert_fires_on_its_series_and_stays_quiet_otherwise(tmp_path: Path) -> None:
    write_rule_file(tmp_path / "rules.yaml")
    shutil.copy(HERE / "alerts_test.yaml", tmp_path / "alerts_test.yaml")
    result = run([promtool(), "test", "rules", "alerts_test.yaml"], cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_unit_tested_both_ways() -> None:
    alerts = {r["alert"] for g in rule_groups()["groups"] for r in g["rules"]}
    assert alerts == REQUIRED
    doc = yaml.safe_load((HERE / "alerts_test.yaml").read_text())
    firing: set[str] = set()
    quiet: set[str] = set()
    for test in doc["tests"]:
        for case in test.get("alert_rule_test", []):
            (firing if case["exp_alerts"] else quiet).add(case["alertname"])
    assert firing == REQUIRED, "an alert without a test that makes it fire"
    assert quiet == REQUIRED, "an alert without a test that keeps it quiet"


def test_thresholds_come_from_values(tmp_path: Path) -> None:
    rule = template(
        *MONITORING_ON,
        "--set",
        "monitoring.prometheusRule.stalledMinutes=30,monitoring.prometheusRule.alertLabels.team=ml",
    ).one("PrometheusRule")
    stalled = next(
        r
        for g in rule["spec"]["groups"]
        for r in g["rules"]
        if r["alert"] == "TrainopTrainingStalled"
    )
    assert "[30m]" in stalled["expr"]
    assert "> 1800" in stalled["expr"]
    assert stalled["labels"] == {"severity": "warning", "team": "ml"}


def _runbook_anchors() -> set[str]:
    """GitHub's anchors for the headings of the README's Runbooks section."""
    text = README.read_text()
    section = text[text.index("\n## Runbooks\n") :]
    end = re.search(r"\n## (?!#)", section[1:])
    section = section[: end.start() + 1] if end else section
    return {
        re.sub(r"[^a-z0-9 -]", "", m[1].strip().lower()).replace(" ", "-")
        for m in re.finditer(r"^###+ (.+)$", section, re.MULTILINE)
    }


def test_every_alert_links_to_its_runbook_section() -> None:
    anchors = _runbook_anchors()
    for group in rule_groups()["groups"]:
        for rule in group["rules"]:
            url = rule["annotations"]["runbook_url"]
            page, _, anchor = url.partition("#")
            assert page.endswith("charts/trainop/README.md"), url
            assert anchor == rule["alert"].lower(), url
            assert anchor in anchors, f"README.md has no Runbooks heading for {rule['alert']}"


def render_as(release: str, namespace: str) -> Rendered:
    result = helm("template", release, str(CHART), "--namespace", namespace, *MONITORING_ON)
    assert result.returncode == 0, result.stderr
    return Rendered([d for d in yaml.safe_load_all(result.stdout) if d])


@pytest.mark.parametrize(
    ("release", "namespace"),
    [
        pytest.param("trainop", "trainop-system", id="default names"),
        pytest.param("ml-platform", "monitoring", id="another release and namespace"),
    ],
)
def test_target_down_alerts_watch_the_targets_the_chart_creates(
    release: str, namespace: str
) -> None:
    # The Prometheus Operator names a PodMonitor's targets job="<namespace>/<name>" and a
    # ServiceMonitor's job="<Service name>": a renamed object must not silence the alerts.
    r = render_as(release, namespace)
    podmonitor = r.one("PodMonitor")["metadata"]
    service = r.one("Service")["metadata"]
    rules = {
        rule["alert"]: rule["expr"]
        for g in r.one("PrometheusRule")["spec"]["groups"]
        for rule in g["rules"]
    }
    assert (
        f'up{{job="{podmonitor["namespace"]}/{podmonitor["name"]}"}} == 0'
        in (rules["TrainopExporterDown"])
    )
    assert (
        f'up{{job="{service["name"]}", namespace="{namespace}"}} == 1'
        in (rules["TrainopOperatorDown"])
    )


@pytest.mark.parametrize(
    ("monitors", "absent"),
    [
        pytest.param("podMonitor", {"TrainopExporterDown"}, id="no PodMonitor"),
        pytest.param("serviceMonitor", {"TrainopOperatorDown"}, id="no ServiceMonitor"),
    ],
)
def test_a_target_down_alert_needs_its_monitor(monitors: str, absent: set[str]) -> None:
    # Without the monitor there is no such target: the alert would never fire, or, for
    # absent(), always.
    r = template(*MONITORING_ON, "--set", f"monitoring.{monitors}.enabled=false")
    alerts = {
        rule["alert"] for g in r.one("PrometheusRule")["spec"]["groups"] for rule in g["rules"]
    }
    assert alerts == REQUIRED - absent


def _recording_rules() -> list[dict[str, str]]:
    return [r for g in recording_groups()["groups"] for r in g["rules"]]


def test_recording_rules_are_valid_and_each_is_unit_tested(tmp_path: Path) -> None:
    records = {r["record"] for r in _recording_rules()}
    assert records == RECORDS
    rules = write_rule_file(tmp_path / "recording.yaml", recording=True)
    checked = run([promtool(), "check", "rules", rules])
    assert checked.returncode == 0, checked.stdout + checked.stderr
    doc = yaml.safe_load((HERE / "recording_test.yaml").read_text())
    tested = {
        case["expr"].split("{")[0] for test in doc["tests"] for case in test["promql_expr_test"]
    }
    assert tested == RECORDS, "a recording rule without a promtool test"
    shutil.copy(HERE / "recording_test.yaml", tmp_path / "recording_test.yaml")
    result = run([promtool(), "test", "rules", "recording_test.yaml"], cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("rule", sorted(RECORDS))
def test_recording_rules_read_only_metrics_trainop_emits(rule: str) -> None:
    expr = next(r["expr"] for r in _recording_rules() if r["record"] == rule)
    used = reads(expr)
    assert used.metrics <= names.ALL_METRIC_NAMES, sorted(used.metrics - names.ALL_METRIC_NAMES)
    # Grouped by the job's identity only: one series per TrainingJob.
    assert used.labels == {names.L_TRAININGJOB_NAMESPACE, names.L_TRAININGJOB}

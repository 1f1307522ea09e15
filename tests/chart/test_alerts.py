"""The PrometheusRule's alerts, checked and unit-tested by the real promtool."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from tests.chart.helpers import promtool, rule_groups, run, write_rule_file

HERE = Path(__file__).parent
# What the issue asks the rules to catch; each must have its promtool unit test.
REQUIRED = {
    "TrainopTrainingStalled",
    "TrainopGPUIdle",
    "TrainopRestartStorm",
    "TrainopJobRestartStorm",
    "TrainopGPUThrottled",
    "TrainopJobFailed",
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
    from tests.chart.helpers import MONITORING_ON, template

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

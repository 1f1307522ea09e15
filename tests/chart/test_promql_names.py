"""Every dashboard panel and every alert reads only metrics and labels trainop emits.

The names come from their single sources, operator/trainop/exporter/names.py and
operator/trainop/operator_metrics.py: a renamed metric fails here, not on a
blank panel in production.
"""

from __future__ import annotations

import re

import pytest
from prometheus_client.metrics import MetricWrapperBase

from tests.chart.helpers import Query, dashboard_queries, rule_queries
from tests.chart.promql import reads
from trainop import operator_metrics
from trainop.api.status import Phase
from trainop.exporter import names

# Attached by the scrape (PodMonitor/ServiceMonitor/static config), and so different
# from one Prometheus to the next: no panel or alert may depend on them.
TARGET_LABELS = frozenset({"job", "instance", "pod", "namespace", "container", "endpoint"})


def _operator_series() -> dict[str, frozenset[str]]:
    """Exposed series names of the operator's metrics, with their label names."""
    out: dict[str, frozenset[str]] = {}
    for metric in vars(operator_metrics).values():
        if not isinstance(metric, MetricWrapperBase):
            continue
        labels = frozenset(metric._labelnames)
        name, kind = metric._name, metric._type
        if kind == "counter":
            out[f"{name}_total"] = labels
        elif kind == "histogram":
            out[f"{name}_bucket"] = labels | {"le"}
            out[f"{name}_sum"] = labels
            out[f"{name}_count"] = labels
        else:
            out[name] = labels
    return out


def _exporter_series() -> dict[str, frozenset[str]]:
    out = {
        spec.name: frozenset(names.IDENTITY_LABELS) | frozenset(spec.labels) for spec in names.SPECS
    }
    # prometheus_client's process metrics carry no identity labels (names.py).
    out.update({name: frozenset() for name in names.PROCESS_METRICS})
    return out


KNOWN = {**_exporter_series(), **_operator_series()}
# Prometheus' own series per target. Only the alerts about the targets themselves read it,
# by the `job` the Prometheus Operator gives the chart's monitors' targets
# (tests/chart/test_alerts.py checks those names against the rendered monitors).
SCRAPE_HEALTH = {"up": TARGET_LABELS}
TARGET_ALERTS = frozenset({"alert TrainopExporterDown", "alert TrainopOperatorDown"})
QUERIES = dashboard_queries() + rule_queries()


def test_the_known_names_are_the_real_ones() -> None:
    # Guards the helpers above: a broken introspection would make every check vacuous.
    assert "trainop_operator_reconcile_duration_seconds_bucket" in KNOWN
    assert "trainop_operator_restarts_total" in KNOWN
    assert KNOWN["trainop_operator_jobs"] == {"phase"}
    assert "trainop_gpu_energy_joules_total" in KNOWN
    assert set(KNOWN) >= names.ALL_METRIC_NAMES


def test_there_are_panels_and_alerts_to_check() -> None:
    wheres = {q.where for q in QUERIES}
    assert len([w for w in wheres if w.startswith("fleet:")]) >= 15
    assert len([w for w in wheres if w.startswith("trainingjob:")]) >= 20
    assert len([w for w in wheres if w.startswith("alert ")]) >= 6


@pytest.mark.parametrize("query", QUERIES, ids=lambda q: q.where)
def test_reads_only_metrics_and_labels_trainop_emits(query: Query) -> None:
    r = reads(query.expr)
    assert r.metrics, f"no metric found in {query.expr!r}"
    about_targets = query.where in TARGET_ALERTS
    known = {**KNOWN, **SCRAPE_HEALTH} if about_targets else KNOWN
    unknown = r.metrics - set(known)
    assert not unknown, f"{query.where}: {sorted(unknown)} are not emitted by trainop"
    emitted = frozenset().union(*(known[m] for m in r.metrics))
    assert about_targets or not (r.labels & TARGET_LABELS), (
        f"{query.where} depends on scrape target labels"
    )
    missing = r.labels - emitted
    assert not missing, f"{query.where}: no metric of {sorted(r.metrics)} has {sorted(missing)}"


def test_phase_and_reason_values_are_real() -> None:
    phases = {p.value for p in Phase}
    reasons = {reason for _, reason in names.CLOCK_EVENT_REASONS}
    for query in QUERIES:
        for metric, matcher in reads(query.expr).matchers:
            for label, value in _equalities(matcher):
                if label == "phase":
                    assert value in phases, f"{query.where}: phase {value!r}"
                if metric == names.GPU_CLOCK_EVENT_ACTIVE and label == names.L_REASON:
                    assert set(value.split("|")) <= reasons, f"{query.where}: reason {value!r}"


def _equalities(matcher: str) -> list[tuple[str, str]]:
    return re.findall(r'(\w+)\s*=~?\s*"([^"]*)"', matcher)


@pytest.mark.parametrize(
    ("expr", "metrics", "labels"),
    [
        ("max by (phase) (trainop_operator_jobs)", {"trainop_operator_jobs"}, {"phase"}),
        (
            'sum(increase(a_total{x="$v", y=~"1|2"}[$__range])) / 3.6e6',
            {"a_total"},
            {"x", "y"},
        ),
        (
            "histogram_quantile(0.99, sum by (le) (rate(h_bucket[5m])))",
            {"h_bucket"},
            {"le"},
        ),
        ("a offset 15m and on (p, q) b > 900", {"a", "b"}, {"p", "q"}),
        ("sum_over_time((u < bool 0.05)[1h:1m]) * $__interval_ms", {"u"}, set()),
    ],
    ids=["by", "matchers-range-number", "histogram", "offset-on", "subquery-bool"],
)
def test_the_lexer(expr: str, metrics: set[str], labels: set[str]) -> None:
    r = reads(expr)
    assert r.metrics == metrics
    assert r.labels == labels

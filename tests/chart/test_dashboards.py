"""The chart's dashboards are the generator's output, and their windows never go blank.

operator/trainop/dashboards is the single source: the JSON in the chart is checked
identical to what it builds, so a hand edit to the JSON (or a generator change without
`make dashboards`) fails here rather than drifting.
"""

from __future__ import annotations

import pytest
from prometheus_client.metrics import MetricWrapperBase

from tests.chart.helpers import DASHBOARDS, Query, dashboard_queries, dashboards, panels
from tests.chart.promql import windows
from trainop import operator_metrics as op
from trainop.dashboards import build_dashboards
from trainop.dashboards.panels import render
from trainop.dashboards.promql import BY_JOB, JOB, by, operator_buckets, operator_series
from trainop.exporter import names

# Grafana's $__rate_interval is max($__interval + scrape interval, 4 * scrape interval):
# rate() and increase() always see enough samples. $__range is the whole range. Any other
# window (a bare $__interval, or a fixed 1m) is blank at some zoom or scrape interval.
SAFE_WINDOWS = frozenset({"$__rate_interval", "$__range"})


def test_the_chart_ships_exactly_the_generated_dashboards() -> None:
    generated = build_dashboards()
    assert sorted(p.stem for p in DASHBOARDS.glob("*.json")) == sorted(generated)
    for stem, doc in generated.items():
        committed = (DASHBOARDS / f"{stem}.json").read_text()
        assert committed == render(doc), f"{stem}.json differs from the generator: make dashboards"


@pytest.mark.parametrize("query", dashboard_queries(), ids=lambda q: q.where)
def test_every_window_spans_at_least_four_scrapes(query: Query) -> None:
    unsafe = [w for w in windows(query.expr) if w not in SAFE_WINDOWS]
    assert not unsafe, f"{query.where}: window {unsafe} in {query.expr}"


def test_energy_used_is_kwh_per_interval_from_a_rate_window() -> None:
    # It used increase(...[$__interval]): blank whenever a step held under two scrapes.
    (panel,) = [p for p in panels(dashboards()["trainingjob"]) if p["title"] == "Energy used"]
    (target,) = panel["targets"]
    assert windows(target["expr"]) == ["$__rate_interval"]
    assert target["expr"].endswith("* $__interval_ms / 1000 / 3600000")
    assert panel["fieldConfig"]["defaults"]["unit"] == "kwatth"


# "Is my job using the GPU?": utilization says a kernel ran, tensor activity says the
# tensor cores worked. One panel per job in the fleet, one for the job on its own dashboard.
@pytest.mark.parametrize(
    ("stem", "title", "per_job"),
    [
        pytest.param("fleet", "Tensor core activity by job", by(BY_JOB), id="fleet"),
        pytest.param(
            "trainingjob",
            "Efficiency: is the job using its GPUs?",
            f'{JOB}="$trainingjob"',
            id="one job",
        ),
    ],
)
def test_an_efficiency_panel_shows_tensor_activity_per_job(
    stem: str, title: str, per_job: str
) -> None:
    (panel,) = [p for p in panels(dashboards()[stem]) if p["title"] == title]
    tensor = [t["expr"] for t in panel["targets"] if names.GPU_TENSOR_ACTIVE in t["expr"]]
    assert tensor, f"{title} does not read {names.GPU_TENSOR_ACTIVE}"
    assert all(e.startswith("avg") and per_job in e for e in tensor), tensor
    assert panel["fieldConfig"]["defaults"]["unit"] == "percentunit"
    assert panel["fieldConfig"]["defaults"]["max"] == 1


@pytest.mark.parametrize(
    ("expr", "found"),
    [
        ("rate(a[$__rate_interval])", ["$__rate_interval"]),
        ("increase(a[$__interval]) / 3", ["$__interval"]),
        ("sum_over_time((a < bool 1)[$__range:$__interval])", ["$__range"]),
        ('a{x="[not a window]"} + b[5m]', ["5m"]),
        ("max(a) - min(b)", []),
    ],
    ids=["rate", "bare-interval", "subquery-step-is-no-window", "string-skipped", "none"],
)
def test_the_window_finder(expr: str, found: list[str]) -> None:
    assert windows(expr) == found


@pytest.mark.parametrize(
    ("metric", "series"),
    [
        (op.JOBS, "trainop_operator_jobs"),
        (op.RESTARTS, "trainop_operator_restarts_total"),
        (op.API_ERRORS, "trainop_operator_api_errors_total"),
    ],
    ids=["gauge", "counter", "counter-with-labels"],
)
def test_operator_metrics_are_read_under_their_exposed_names(
    metric: MetricWrapperBase, series: str
) -> None:
    assert operator_series(metric) == series


def test_histograms_are_read_by_their_buckets() -> None:
    assert operator_buckets(op.RECONCILE_SECONDS) == (
        "trainop_operator_reconcile_duration_seconds_bucket"
    )

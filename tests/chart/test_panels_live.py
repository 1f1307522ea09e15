"""Every PromQL expression of every dashboard panel returns data from a real Prometheus.

Real processes only: the operator (`trainop operator`) against the local control
plane running a TrainingJob through a worker failure, two metrics sidecars
(`python -m trainop.exporter`, one per worker pod of that job, with the exporter's
FakeNVML and a live progress.json), and Prometheus scraping all three on
127.0.0.1, with the chart's alert rules loaded. Grafana's variables are replaced
the way Grafana would, and each query must return at least one finite value: a
panel that could only ever be blank fails here.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.chart.helpers import Query, dashboard_queries, dashboards, panels, rule_queries
from tests.chart.kube import WORKERS, phase, running_workers, training_job
from tests.chart.live import (
    JOB,
    SCRAPE,
    default_interval,
    evaluate,
    grafana_at,
    grafana_expr,
    has_data,
    http_json,
    prometheus,
    query_range,
    seconds,
    sidecar,
)
from tests.cluster.conftest import Cluster, Operator, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

# `make dashboard-previews` sets it to a directory: the test then also draws each
# dashboard from this Prometheus into <dir>/<dashboard>.png, after a longer run.
PREVIEWS_ENV = "TRAINOP_DASHBOARD_PREVIEWS"
PREVIEW_HISTORY_SECONDS = 60


def panel_peaks(host: str, title: str, ns: str, since: float) -> dict[str, float]:
    """Each target of the per-job panel `title`, as Grafana draws it (a range query
    at a 1 s step since `since`): its legend and the highest value it reached."""
    (panel,) = [p for p in panels(dashboards()["trainingjob"]) if p["title"] == title]
    peaks: dict[str, float] = {}
    for target in panel["targets"]:
        result = query_range(host, grafana_expr(target["expr"], ns), since)
        values = [float(v) for s in result for _, v in s["values"]]
        peaks[target["legendFormat"]] = max(values, default=math.nan)
    return peaks


@dataclass(frozen=True)
class Scene:
    host: str  # the Prometheus
    restarts: int  # what the API server counted for the injected failure
    failed_at: float
    scraping_since: float


@contextmanager
def scene(c: Cluster, ns: str, tmp_path: Path, interval: str) -> Iterator[Scene]:
    """The operator running a 2-worker job, both sidecars and Prometheus scraping all
    three every `interval`; once Prometheus has seen the job, a worker fails and is
    replaced. Yields once the restart is counted and both workers run again."""
    op = Operator(c, tmp_path / "operator.log")
    # Frequent resyncs keep the reconcile histogram moving within the short ranges.
    op.start(TRAINOP_RESYNC_SECONDS="2")
    with ExitStack() as stack:
        stack.callback(op.stop)
        c.apply(training_job(JOB), ns)
        pods = running_workers(c, ns, JOB, 2)
        phase(c, ns, JOB, "Running")
        ports = [sidecar(stack, tmp_path, ns, slot) for slot in (0, 1)]
        base = prometheus(stack, tmp_path, op.metrics_port, ports, interval=interval)
        scraping_since = time.time()
        # Prometheus must have seen the job before its failure, or nothing changes.
        wait_for(
            "Prometheus to scrape the job's restart count",
            lambda: evaluate(base, f'trainop_operator_job_restarts{{trainingjob="{JOB}"}} == 0'),
            timeout=30 + 3 * seconds(interval),
        )
        # A job the API server refuses (its dry run names a PriorityClass that does not
        # exist): the operator's API error counter gets a series, as on any cluster
        # where something was ever refused.
        c.apply(training_job("refused", scheduling={"priorityClassName": "no-such-class"}), ns)
        wait_for(
            "the refused job's AdmissionRejected",
            lambda: (
                (c.get("trainingjob", "refused", ns).get("status") or {}).get("reason")
                == "AdmissionRejected"
            ),
            timeout=60,
        )
        # A worker fails: the operator replaces it and counts the restart.
        c.kubectl(
            "annotate", "pod", pods[0]["metadata"]["name"], "-n", ns,
            "kwok.trainop.dev/exit-code=1",
        )  # fmt: skip
        failed_at = time.time()

        def counted() -> int | None:
            status = c.get("trainingjob", JOB, ns).get("status") or {}
            return int(status.get("restarts") or 0) or None

        restarts = wait_for("the failure counted in status", counted, timeout=60)
        running_workers(c, ns, JOB, 2)
        yield Scene(base, restarts, failed_at, scraping_since)
    assert c.list("pods", ns, WORKERS.format(name=JOB))


def blank_panels(host: str, ns: str, variables: dict[str, str] | None = None) -> list[Query]:
    """The dashboard queries that return no finite value now."""
    return [
        q
        for q in dashboard_queries()
        if not has_data(evaluate(host, grafana_expr(q.expr, ns, variables)))
    ]


def test_every_dashboard_query_returns_data_at_the_charts_scrape_interval(
    crd: Cluster, ns: str, tmp_path: Path
) -> None:
    """The same, at the scrape interval the chart's PodMonitor and ServiceMonitor set
    (30 s) and the variables Grafana derives from it ($__rate_interval 2 m): a panel
    whose window holds fewer than two samples at that interval would be blank."""
    interval = default_interval()
    variables = grafana_at(interval)
    with scene(crd, ns, tmp_path, f"{interval:g}s") as s:

        def blank() -> list[Query]:
            return blank_panels(s.host, ns, variables)

        deadline = time.monotonic() + 8 * interval
        missing = blank()
        while missing and time.monotonic() < deadline:
            time.sleep(interval / 3)
            missing = blank()
        assert not missing, f"panels without data at a {interval:g} s scrape:\n" + "\n".join(
            f"  {q.where}: {grafana_expr(q.expr, ns, variables)}" for q in missing
        )


def test_every_dashboard_query_returns_data(crd: Cluster, ns: str, tmp_path: Path) -> None:
    c = crd
    with scene(c, ns, tmp_path, SCRAPE) as s:
        base, restarts, failed_at, scraping_since = (
            s.host,
            s.restarts,
            s.failed_at,
            s.scraping_since,
        )
        queries = dashboard_queries()

        def blank() -> list[Query]:
            return blank_panels(base, ns)

        # Ranges need samples: give every window time to fill, then demand data everywhere.
        time.sleep(30)
        deadline = time.monotonic() + 60
        missing = blank()
        while missing and time.monotonic() < deadline:
            time.sleep(3)
            missing = blank()
        assert not missing, "panels without data:\n" + "\n".join(
            f"  {q.where}: {grafana_expr(q.expr, ns)}" for q in missing
        )
        assert len(queries) >= 40

        # The restart timeline shows the injected failure: the restarts the API server
        # counted, the job's budget, and a bar after the moment the worker failed.
        peaks = panel_peaks(
            base, "Restart timeline: workers replaced by the operator", ns, failed_at - 5
        )
        spec = c.get("trainingjob", JOB, ns)["spec"]
        in_interval = peaks.pop("restarts in interval")
        assert peaks == {
            "restarts used": restarts,
            "restart budget": spec["failurePolicy"]["backoffLimit"],
        }
        # increase() extrapolates to the window's edges: with scrapes late on a loaded
        # machine (fewer samples in the 10 s window) one restart reads up to ~2.
        assert restarts * 0.5 <= in_interval <= restarts * 2, in_interval

        # The same Prometheus loaded the chart's alert rules and evaluates them cleanly.
        groups = http_json(base, "/api/v1/rules")["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        # Every rule the chart renders, however many issue by issue.
        assert len(rules) == len(rule_queries())
        assert [r["name"] for r in rules if r["health"] != "ok"] == []

        # The targets' own labels are all the dashboards needed: nothing else was set.
        pods_seen = {
            s["metric"]["trainingjob_pod"]
            for s in evaluate(base, f'trainop_training_up{{trainingjob="{JOB}"}}')
        }
        assert pods_seen == {f"{JOB}-worker-0", f"{JOB}-worker-1"}
        if previews := os.environ.get(PREVIEWS_ENV):
            time.sleep(PREVIEW_HISTORY_SECONDS)
            draw_previews(base, ns, Path(previews), scraping_since)


def draw_previews(host: str, ns: str, out_dir: Path, since: float) -> None:
    """Each dashboard as a PNG, from what this Prometheus holds since `since`."""
    from tests.chart import previews  # matplotlib is needed only when previews are asked for

    def span(expr: str) -> list[previews.Series]:
        result = query_range(host, grafana_expr(expr, ns), since)
        return [(s["metric"], [(float(t), float(v)) for t, v in s["values"]]) for s in result]

    def instant(expr: str) -> list[previews.Series]:
        result = evaluate(host, grafana_expr(expr, ns))
        return [(s["metric"], [(float(s["value"][0]), float(s["value"][1]))]) for s in result]

    for name, dashboard in dashboards().items():
        png = previews.render(dashboard, span, instant, out_dir / f"{name}.png")
        # A blank canvas compresses to a few KB; drawn panels do not.
        assert png.stat().st_size > 50_000, f"{png} looks empty"

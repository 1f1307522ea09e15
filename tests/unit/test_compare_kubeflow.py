"""bench/compare-kubeflow's pure parts: the audit log as a clock, and the goal table."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "compare-kubeflow"


def _load(name: str) -> ModuleType:
    """The bench's folder name is not an importable package name."""
    spec = importlib.util.spec_from_file_location(f"compare_kubeflow_{name}", BENCH / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


audit = _load("audit")
report = _load("report")

T0 = "2026-12-03T07:00:00.000000Z"


def at(ms: float) -> str:
    whole, frac = divmod(round(ms * 1000), 1_000_000)
    return f"2026-12-03T07:00:{whole:02d}.{frac:06d}Z"


def line(
    ms: float,
    verb: str,
    resource: str,
    name: str,
    *,
    ns: str = "tj",
    agent: str = "trainop-operator/x",
    code: int = 201,
    sub: str = "",
    uri: str = "/api/v1/namespaces/tj/pods",
    stage: str = "ResponseComplete",
) -> str:
    ref: dict[str, Any] = {"resource": resource, "namespace": ns, "name": name}
    if sub:
        ref["subresource"] = sub
    return json.dumps(
        {
            "stage": stage,
            "verb": verb,
            "requestURI": uri,
            "userAgent": agent,
            "objectRef": ref,
            "responseStatus": {"code": code},
            "requestReceivedTimestamp": at(ms),
            "stageTimestamp": at(ms),
        }
    )


def entries(*lines: str) -> list[Any]:
    return [e for e in map(audit.parse_line, lines) if e is not None]


def test_parse_time_keeps_microseconds() -> None:
    assert audit.parse_time(at(1.5)) - audit.parse_time(T0) == pytest.approx(0.0015, abs=1e-6)


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        pytest.param(line(0, "create", "pods", "j-worker-0"), True, id="complete"),
        pytest.param(
            line(0, "create", "pods", "j-worker-0", stage="ResponseStarted"), False, id="started"
        ),
        pytest.param(line(0, "create", "pods", "j-worker-0")[:40], False, id="cut-short"),
    ],
)
def test_parse_line(text: str, kept: bool) -> None:
    assert (audit.parse_line(text) is not None) == kept


JOB = line(0, "create", "trainingjobs", "j", agent="bench")


@pytest.mark.parametrize(
    ("log", "n", "expected_ms"),
    [
        pytest.param([JOB, line(40, "create", "pods", "j-worker-0")], 1, 40, id="first-pod"),
        pytest.param(
            [
                JOB,
                line(10, "create", "pods", "j-worker-0", uri="/api/v1/pods?dryRun=All"),
                line(20, "create", "pods", "j-worker-0", code=409),
                line(30, "create", "pods", "j-worker-0", sub="binding"),
                line(50, "create", "pods", "j-worker-0"),
            ],
            1,
            50,
            id="dry-runs-conflicts-bindings-are-not-pods",
        ),
        pytest.param(
            [
                JOB,
                line(5, "create", "pods", "j-worker-1"),
                line(9, "create", "pods", "j-worker-0"),
                line(12, "create", "pods", "j-worker-1"),  # recreated: counts once
            ],
            2,
            9,
            id="nth-distinct-pod",
        ),
        pytest.param(
            [
                JOB,
                line(5, "create", "pods", "j-worker-0"),
                line(6, "create", "pods", "jj-worker-1"),
            ],
            2,
            None,
            id="another-jobs-pods",
        ),
        pytest.param(
            [JOB, line(5, "create", "pods", "j-worker-0", ns="kf")], 1, None, id="other-namespace"
        ),
        pytest.param([line(5, "create", "pods", "j-worker-0")], 1, None, id="no-job-create"),
    ],
)
def test_time_to_pods(log: list[str], n: int, expected_ms: float | None) -> None:
    got = audit.time_to_pods(entries(*log), "trainingjobs", "tj", "j", n)
    if expected_ms is None:
        assert got is None
    else:
        assert got == pytest.approx(expected_ms / 1000, abs=1e-6)


def test_failure_and_replacement() -> None:
    log = entries(
        line(0, "patch", "pods", "j-worker-0", code=200, sub="status", agent="kwok"),  # Running
        line(100, "patch", "pods", "j-worker-0", code=200, agent="bench"),  # the annotation
        line(103, "patch", "pods", "j-worker-0", code=200, sub="status", agent="kwok"),  # Failed
        line(120, "delete", "pods", "j-worker-0", code=200),
        line(125, "create", "pods", "j-worker-0", code=409),  # still terminating
        line(150, "create", "pods", "j-worker-0"),
    )
    asked = audit.parse_time(at(99))
    marked = audit.marked_failed_at(log, "tj", "j-worker-0", asked)
    assert marked == pytest.approx(audit.parse_time(at(103)))
    replaced = audit.replaced_at(log, "tj", "j-worker-0", marked)
    assert replaced is not None
    assert replaced - marked == pytest.approx(0.047, abs=1e-6)


def test_request_counts_by_agent_and_window() -> None:
    log = entries(
        line(0, "get", "trainingjobs", "j", code=200),
        line(1, "get", "trainingjobs", "j", code=200, agent="kopf/1.37"),
        line(2, "create", "pods", "j-worker-0", uri="/pods?dryRun=All"),
        line(3, "update", "trainingjobs", "j", code=200, sub="status"),
        line(4, "create", "pods", "j-worker-0", agent="bench"),  # not the operator
        line(5, "get", "services", "j", code=404),
        line(900, "get", "trainingjobs", "j", code=200),  # after the window
    )
    start, end = audit.parse_time(T0), audit.parse_time(at(10))
    counts = audit.request_counts(log, ("trainop-operator/", "kopf/"), start, end)
    assert counts == {
        "get trainingjobs": 2,
        "create (dry run) pods": 1,
        "update trainingjobs/status": 1,
        "get services": 1,
    }
    failed = audit.failed_requests(log, ("trainop-operator/",), start, end)
    assert failed == {"404 get services": 1}


@pytest.mark.parametrize(
    ("kf", "tj", "limit", "ratio", "met"),
    [
        pytest.param([0.010, 0.012, 0.011], [0.011], 1.0, "1.00x", True, id="equal-meets"),
        pytest.param([0.010], [0.020], 1.0, "2.00x", False, id="slower-misses"),
        pytest.param([3.0], [0.9], 0.3, "0.30x", True, id="at-the-limit"),
        pytest.param([3.0], [0.91], 0.3, "0.30x", False, id="just-over-the-limit"),
        pytest.param([], [0.1], 1.0, "-", None, id="kubeflow-not-measured"),
        pytest.param([0.1], [], 1.0, "-", None, id="trainop-not-measured"),
    ],
)
def test_ratio_row(
    kf: list[float], tj: list[float], limit: float, ratio: str, met: bool | None
) -> None:
    row = report.ratio_row(kf, tj, "m", "s", limit)
    assert (row.ratio, row.met) == (ratio, met)


BURST = {"jobs": 200, "workers": 8, "clients": 8, "jobs_per_s": 25.0, "peak_rss_mb": 120.0}
BURST |= {"errors": 0, "all_pods_s": 8.0}


@pytest.mark.parametrize(
    ("changes", "met"),
    [
        pytest.param(None, None, id="not-run"),
        pytest.param({}, True, id="meets"),
        pytest.param({"jobs_per_s": 4.8, "all_pods_s": 41.8}, False, id="too-slow"),
        pytest.param({"peak_rss_mb": 150.0}, False, id="rss-not-below-150"),
        pytest.param({"errors": 1}, False, id="an-error"),
        pytest.param(
            {"jobs_per_s": None, "all_pods_s": None, "errors": 3, "pods_created": 1500},
            False,
            id="incomplete",
        ),
    ],
)
def test_burst_row(changes: dict[str, Any] | None, met: bool | None) -> None:
    burst = None if changes is None else BURST | changes
    assert report.burst_row(burst).met is met


def test_rows_cover_every_goal_in_order() -> None:
    rows = report.build_rows({}, {}, None)
    assert [r.measure for r in rows[:-1]] == [m for _, m, _, _ in report.RATIO_GOALS]
    assert "burst" in rows[-1].measure
    table = report.markdown_table(rows)
    assert table.count("\n") == len(rows) + 1


@pytest.mark.parametrize(
    ("value", "unit", "text"),
    [
        pytest.param(0.0114, "s", "11 ms", id="ms"),
        pytest.param(2.961, "s", "2.96 s", id="s"),
        pytest.param(60.4, "MB", "60 MB", id="mb"),
        pytest.param(31.0, "requests", "31", id="count"),
        pytest.param(30.5, "requests", "30.5", id="median-of-even"),
        pytest.param(None, "s", "-", id="none"),
    ],
)
def test_fmt(value: float | None, unit: str, text: str) -> None:
    assert report.fmt(value, unit) == text

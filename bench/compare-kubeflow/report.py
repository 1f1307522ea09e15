"""The comparison table: each measure, both operators, the ratio and its goal.

Purely computational, no side effects: the samples compare.py gathered in, rows and
markdown out. The goals are issue 13's "done when" for trainop against Kubeflow's
training operator at its defaults, measured in the same run.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

# (key in each side's samples, what it measures, unit, the largest trainop/Kubeflow ratio
# that meets the goal)
RATIO_GOALS: tuple[tuple[str, str, str, float], ...] = (
    ("first_pod_s", "apply -> first worker pod exists (1 worker)", "s", 1.0),
    ("pods_8_s", "apply -> 8 worker pods exist", "s", 1.0),
    ("pods_64_s", "apply -> 64 worker pods exist", "s", 0.3),
    ("replacement_s", "pod marked Failed -> replacement pod exists", "s", 1.0),
    ("api_requests", "API requests, 4-worker lifecycle", "requests", 0.6),
    ("cpu_s", "operator CPU, one repetition's workload", "s", 1.2),
    ("peak_rss_mb", "peak RSS", "MB", 1.2),
)

BURST_JOBS_PER_S = 20.0
BURST_RSS_MB = 150.0


@dataclass(frozen=True)
class Row:
    measure: str
    kubeflow: str
    trainop: str
    ratio: str
    goal: str
    met: bool | None  # None: not measured


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "s":
        return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"
    if unit == "MB":
        return f"{value:.0f} MB"
    return f"{value:.0f}" if value == int(value) else f"{value:.1f}"


def fmt_samples(values: Sequence[float], unit: str) -> str:
    """The median, with the range when there is more than one sample."""
    mid = median(values)
    if mid is None:
        return "-"
    if len(values) == 1 or min(values) == max(values):
        return fmt(mid, unit)
    return f"{fmt(mid, unit)} ({fmt(min(values), unit)}-{fmt(max(values), unit)})"


def ratio_row(
    kf: Sequence[float], tj: Sequence[float], measure: str, unit: str, limit: float
) -> Row:
    """trainop's median over Kubeflow's; met when at most `limit`."""
    goal = f"<= {limit:g}x"
    mk, mt = median(kf), median(tj)
    if mk is None or mt is None or mk <= 0:
        return Row(measure, fmt_samples(kf, unit), fmt_samples(tj, unit), "-", goal, None)
    r = mt / mk
    return Row(measure, fmt_samples(kf, unit), fmt_samples(tj, unit), f"{r:.2f}x", goal, r <= limit)


def burst_row(burst: Mapping[str, Any] | None) -> Row:
    goal = f">= {BURST_JOBS_PER_S:g} jobs/s, RSS < {BURST_RSS_MB:g} MB, no errors"
    measure = "burst: TrainingJobs x 8 workers, 8 concurrent clients"
    if not burst:
        return Row(measure, "not run", "-", "-", goal, None)
    measure = (
        f"burst: {burst['jobs']} TrainingJobs x {burst['workers']} workers, "
        f"{burst['clients']} concurrent clients"
    )
    rate = burst.get("jobs_per_s")
    rss = burst.get("peak_rss_mb")
    errors = int(burst.get("errors", 0))
    done = burst.get("all_pods_s")
    trainop = (
        f"all pods after {fmt(done, 's')}; {rate:.1f} jobs/s; RSS {fmt(rss, 'MB')}; {errors} errors"
        if rate is not None and rss is not None and done is not None
        else f"incomplete: {burst.get('pods_created', 0)} pods; {errors} errors"
    )
    met = (
        rate is not None
        and rss is not None
        and rate >= BURST_JOBS_PER_S
        and rss < BURST_RSS_MB
        and errors == 0
    )
    return Row(measure, "not run (trainop only)", trainop, "-", goal, met)


def build_rows(
    kubeflow: Mapping[str, Sequence[float]],
    trainop: Mapping[str, Sequence[float]],
    burst: Mapping[str, Any] | None,
) -> list[Row]:
    rows = [
        ratio_row(kubeflow.get(key, []), trainop.get(key, []), measure, unit, limit)
        for key, measure, unit, limit in RATIO_GOALS
    ]
    rows.append(burst_row(burst))
    return rows


def met_word(met: bool | None) -> str:
    return {True: "met", False: "**missed**", None: "not measured"}[met]


def markdown_table(rows: Sequence[Row]) -> str:
    lines = [
        "| measure | Kubeflow v1.9.2 | trainop | trainop / Kubeflow | goal | |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r.measure} | {r.kubeflow} | {r.trainop} | {r.ratio} | {r.goal} | {met_word(r.met)} |"
        for r in rows
    ]
    return "\n".join(lines)


def rows_as_dicts(rows: Sequence[Row]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]


def by_kind_table(
    kubeflow: Mapping[str, int], trainop: Mapping[str, int], order: Callable[[str], Any] = str
) -> str:
    """Requests by verb and resource, one lifecycle each, side by side."""
    keys = sorted(set(kubeflow) | set(trainop), key=order)
    lines = ["| request | Kubeflow | trainop |", "|---|---|---|"]
    lines += [f"| {k} | {kubeflow.get(k, 0)} | {trainop.get(k, 0)} |" for k in keys]
    lines.append(f"| **total** | {sum(kubeflow.values())} | {sum(trainop.values())} |")
    return "\n".join(lines)

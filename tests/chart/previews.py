"""A PNG preview of a dashboard, drawn with matplotlib from a live Prometheus.

Grafana itself cannot run here (its server's license is not one this project uses), so
this draws each panel the way Grafana would lay it out: the same grid positions, titles,
queries, legends and units, from the same Prometheus the panel test fills. A preview, not
a pixel copy: stat numbers, bar gauges, time series (stacked or bars) and state timelines.
`make dashboard-previews` writes docs/dashboards/<dashboard>.png.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import matplotlib as mpl

mpl.use("Agg")  # no display: files only

import matplotlib.dates as mdates
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

Obj = dict[str, Any]
# One series of a Prometheus result: (its labels, its [(unix time, value)] points).
Series = tuple[dict[str, str], list[tuple[float, float]]]
Fetch = Callable[[str], list[Series]]

BACKGROUND, PANEL, TEXT, GRID = "#111217", "#181b1f", "#ccccdc", "#2c3235"
PALETTE = ["#73bf69", "#f2cc0c", "#8ab8ff", "#ff780a", "#f2495c", "#5794f2", "#b877d9"]
COLORS = {"blue": "#5794f2", "green": "#73bf69", "orange": "#ff9830", "red": "#f2495c"}
ROW_UNIT_INCHES = 0.32
WIDTH_INCHES = 20.0

_SCALED = [
    ("bytes", 1024, ["B", "KiB", "MiB", "GiB", "TiB"]),
    ("watt", 1000, ["W", "kW", "MW"]),
    ("joule", 1000, ["J", "kJ", "MJ", "GJ"]),
]


def format_value(value: float, unit: str, decimals: int | None = None) -> str:
    """A value as Grafana's unit would show it (the units these dashboards use)."""
    if not math.isfinite(value):
        return "No data"
    for name, base, suffixes in _SCALED:
        if unit == name:
            index = 0
            while abs(value) >= base and index < len(suffixes) - 1:
                value, index = value / base, index + 1
            return f"{_number(value, decimals)} {suffixes[index]}"
    simple = {
        "percentunit": (100, " %"),
        "kwatth": (1, " kWh"),
        "h": (1, " h"),
        "s": (1, " s"),
        "reqps": (1, " req/s"),
        "celsius": (1, " °C"),
    }
    factor, suffix = simple.get(unit, (1, ""))
    return f"{_number(value * factor, decimals)}{suffix}"


def _number(value: float, decimals: int | None) -> str:
    # No fixed decimals: three significant digits, so 0.0042 kWh is not "0.0 kWh".
    return f"{value:.3g}" if decimals is None else f"{value:.{decimals}f}"


def legend(fmt: str, labels: dict[str, str], fallback: str) -> str:
    if fmt in ("", "__auto"):
        return ", ".join(f"{k}={v}" for k, v in labels.items() if k != "__name__") or fallback
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m[1], ""), fmt)


def _threshold_color(defaults: Obj, value: float) -> str:
    color = "blue"
    for step in defaults.get("thresholds", {}).get("steps", []):
        if step["value"] is None or value >= step["value"]:
            color = step["color"]
    return COLORS.get(color, color)


def _style(ax: Axes, title: str) -> None:
    ax.set_facecolor(PANEL)
    ax.set_title(title, color=TEXT, fontsize=9, loc="left")
    ax.tick_params(colors=TEXT, labelsize=7)
    for spine in ax.spines.values():
        spine.set_color(GRID)


def _stat(ax: Axes, panel: Obj, instant: Fetch) -> None:
    defaults = panel["fieldConfig"]["defaults"]
    series = instant(panel["targets"][0]["expr"])
    value = series[0][1][-1][1] if series else math.nan
    ax.set_xticks([])
    ax.set_yticks([])
    text = format_value(value, defaults.get("unit", "none"), defaults.get("decimals"))
    color = _threshold_color(defaults, value) if math.isfinite(value) else TEXT
    ax.text(0.5, 0.45, text, ha="center", va="center", fontsize=18, color=color, weight="bold")


def _bargauge(ax: Axes, panel: Obj, instant: Fetch) -> None:
    unit = panel["fieldConfig"]["defaults"].get("unit", "none")
    target = panel["targets"][0]
    series = instant(target["expr"])
    names = [legend(target["legendFormat"], labels, panel["title"]) for labels, _ in series]
    values = [points[-1][1] for _, points in series]
    bars = ax.barh(names[::-1], values[::-1], color=COLORS["blue"])
    ax.bar_label(bars, [format_value(v, unit) for v in values[::-1]], color=TEXT, fontsize=7)
    ax.set_xticks([])
    ax.margins(x=0.25)


def _timeseries(ax: Axes, panel: Obj, span: Fetch) -> None:
    defaults = panel["fieldConfig"]["defaults"]
    custom = defaults.get("custom", {})
    stacked = custom.get("stacking", {}).get("mode") == "normal"
    bars = custom.get("drawStyle") == "bars"
    base: dict[float, float] = {}
    index = 0
    for target in panel["targets"]:
        for labels, points in span(target["expr"]):
            times = [t for t, _ in points]
            values = [v for _, v in points]
            bottom = [base.get(t, 0.0) if stacked else 0.0 for t in times]
            tops = [b + v for b, v in zip(bottom, values, strict=True)]
            when = [datetime.fromtimestamp(t) for t in times]  # local time, as Grafana shows it
            name = legend(target["legendFormat"], labels, panel["title"])
            color = PALETTE[index % len(PALETTE)]
            index += 1
            if bars:
                ax.bar(when, values, bottom=bottom, width=1 / 86400, color=color, label=name)
            elif stacked:
                ax.fill_between(when, bottom, tops, color=color, alpha=0.4, label=name)
            else:
                ax.plot(when, values, color=color, linewidth=1.2, label=name)
            if stacked:
                base.update(zip(times, tops, strict=True))
    unit = defaults.get("unit", "none")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: format_value(v, unit)))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
    if "min" in defaults:
        ax.set_ylim(bottom=defaults["min"])
    ax.grid(color=GRID, linewidth=0.5)
    if index:
        ax.legend(fontsize=6, loc="upper left", facecolor=PANEL, labelcolor=TEXT, ncols=2)


def _timeline(ax: Axes, panel: Obj, span: Fetch) -> None:
    target = panel["targets"][0]
    series = span(target["expr"])
    for row, (_, points) in enumerate(series):
        for (t, v), (t_next, _) in itertools.pairwise(points):
            color = COLORS["green"] if v >= 1 else COLORS["red"]
            start = mdates.date2num(datetime.fromtimestamp(t))
            end = mdates.date2num(datetime.fromtimestamp(t_next))
            ax.broken_barh([(start, end - start)], (row - 0.4, 0.8), color=color)
    ax.set_yticks(
        range(len(series)),
        [legend(target["legendFormat"], labels, "") for labels, _ in series],
    )
    ax.xaxis_date()
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))


def render(dashboard: Obj, span: Fetch, instant: Fetch, out: Path) -> Path:
    """Draw every panel of `dashboard` at its grid position into the PNG `out`."""
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in dashboard["panels"])
    fig: Figure = plt.figure(figsize=(WIDTH_INCHES, rows * ROW_UNIT_INCHES + 0.6))
    fig.patch.set_facecolor(BACKGROUND)
    fig.suptitle(dashboard["title"], color=TEXT, x=0.01, ha="left", fontsize=13)
    top = 1 - 0.6 / (rows * ROW_UNIT_INCHES + 0.6)

    unit_y = top / rows  # one grid row, as a fraction of the figure's height

    # Room around a panel's drawing (below, above, left), in figure fractions: for its
    # title above, and its tick labels below and left of a chart.
    margins = {
        "row": (0, 0, 0.006),
        "stat": (0.2 * unit_y, 0.8 * unit_y, 0.006),
        "bargauge": (0.2 * unit_y, 0.8 * unit_y, 0.06),
        "timeseries": (0.9 * unit_y, 0.8 * unit_y, 0.045),
        "state-timeline": (0.9 * unit_y, 0.8 * unit_y, 0.045),
    }

    def box(pos: Obj, kind: str) -> tuple[float, float, float, float]:
        left, width = pos["x"] / 24, pos["w"] / 24
        bottom, height = top * (1 - (pos["y"] + pos["h"]) / rows), pos["h"] * unit_y
        below, above, beside = margins[kind]
        return (
            left + beside,
            bottom + below,
            width - beside - 0.006,
            height - below - above,
        )

    draw = {"stat": _stat, "bargauge": _bargauge}
    over_time = {"timeseries": _timeseries, "state-timeline": _timeline}
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            left, bottom, _, height = box(panel["gridPos"], "row")
            fig.text(left, bottom + height / 2, panel["title"], color=TEXT, weight="bold")
            continue
        ax = fig.add_axes(box(panel["gridPos"], panel["type"]))
        _style(ax, panel["title"])
        if panel["type"] in draw:
            draw[panel["type"]](ax, panel, instant)
        else:
            over_time[panel["type"]](ax, panel, span)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80, facecolor=BACKGROUND)
    plt.close(fig)
    return out

"""The pieces every trainop dashboard is made of, on grafana-foundation-sdk's typed builders.

One function per kind of panel, holding the look both dashboards share (the data source,
legend, tooltip, colours), so a dashboard module says only what differs: title, query,
unit, size. The SDK follows Grafana's schema, so a misspelt option is a type error, not a
silently ignored JSON key. Purely computational.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeVar

from grafana_foundation_sdk.builders import bargauge as bargauge_builder
from grafana_foundation_sdk.builders import common as common_builder
from grafana_foundation_sdk.builders import dashboard as dashboard_builder
from grafana_foundation_sdk.builders import prometheus
from grafana_foundation_sdk.builders import stat as stat_builder
from grafana_foundation_sdk.builders import statetimeline as statetimeline_builder
from grafana_foundation_sdk.builders import timeseries as timeseries_builder
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model

from trainop.dashboards import promql
from trainop.exporter import names

Json = dict[str, Any]

# Grafana 11.0's dashboard schema, the one the chart's dashboards have always declared:
# a Grafana at least that new imports them without migrating anything.
SCHEMA_VERSION: Final = 39
DATASOURCE_VAR: Final = "datasource"
DATASOURCE: Final = model.DataSourceRef(type_val="prometheus", uid=f"${{{DATASOURCE_VAR}}}")
TAGS: Final = ["trainop", "gpu", "training"]

# Grafana's unit ids, the ones these dashboards use: a typo is a type error.
Unit = Literal[
    "none", "short", "percentunit", "watt", "kwatth", "h", "joule", "bytes", "s", "reqps",
    "celsius", "Bps",
]  # fmt: skip
# Threshold steps: (from value, colour); the first starts at -inf (None).
Steps = Sequence[tuple[float | None, str]]
BLUE: Final[Steps] = ((None, "blue"),)
# (width, height) in grid units; the grid is 24 wide.
Size = tuple[int, int]
HALF: Final[Size] = (12, 8)
THIRD: Final[Size] = (8, 8)
QUARTER: Final[Size] = (6, 8)


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = "__auto"


def _targets(
    queries: Sequence[Query], *, instant: bool
) -> list[cogbuilder.Builder[cogvariants.Dataquery]]:
    out: list[cogbuilder.Builder[cogvariants.Dataquery]] = []
    for ref, query in zip("ABCDEFGH", queries, strict=False):
        target = prometheus.Dataquery().ref_id(ref).expr(query.expr).legend_format(query.legend)
        out.append(target.instant() if instant else target.range())
    return out


# Every panel kind the dashboards use; each builder has the same fluent frame methods.
P = TypeVar(
    "P",
    stat_builder.Panel,
    bargauge_builder.Panel,
    timeseries_builder.Panel,
    statetimeline_builder.Panel,
)


def _frame(
    panel: P, title: str, description: str, targets: Sequence[Query], *, instant: bool, size: Size
) -> P:
    """What every panel has: its title, text, data source, queries and place on the grid."""
    width, height = size
    return (
        panel.title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(_targets(targets, instant=instant))
        .span(width)
        .height(height)
    )


def _thresholds(steps: Steps) -> dashboard_builder.ThresholdsConfig:
    return (
        dashboard_builder.ThresholdsConfig()
        .mode(model.ThresholdsMode.ABSOLUTE)
        .steps([model.Threshold(value=value, color=color) for value, color in steps])
    )


def _color(mode: model.FieldColorModeId) -> dashboard_builder.FieldColor:
    return dashboard_builder.FieldColor().mode(mode)


def _last_value() -> common_builder.ReduceDataOptions:
    return common_builder.ReduceDataOptions().calcs(["lastNotNull"]).fields("").values(False)


def stat(
    title: str,
    description: str,
    expr: str,
    unit: Unit,
    *,
    decimals: int,
    steps: Steps = BLUE,
    size: Size = (3, 6),
) -> stat_builder.Panel:
    """One number, now (an instant query)."""
    return (
        _frame(stat_builder.Panel(), title, description, [Query(expr)], instant=True, size=size)
        .unit(unit)
        .decimals(decimals)
        .color_scheme(_color(model.FieldColorModeId.THRESHOLDS))
        .thresholds(_thresholds(steps))
        .reduce_options(_last_value())
        .color_mode(common.BigValueColorMode.VALUE)
        .graph_mode(common.BigValueGraphMode.NONE)
        .text_mode(common.BigValueTextMode.AUTO)
        .justify_mode(common.BigValueJustifyMode.AUTO)
        .orientation(common.VizOrientation.AUTO)
    )


def bargauge(
    title: str,
    description: str,
    query: Query,
    unit: Unit,
    *,
    size: Size = HALF,
) -> bargauge_builder.Panel:
    """One bar per series, now (an instant query): a ranking."""
    return (
        _frame(bargauge_builder.Panel(), title, description, [query], instant=True, size=size)
        .unit(unit)
        .min(0)
        .color_scheme(_color(model.FieldColorModeId.CONTINUOUS_BL_YL_RD))
        .display_mode(common.BarGaugeDisplayMode.GRADIENT)
        .orientation(common.VizOrientation.HORIZONTAL)
        .show_unfilled(True)
        .reduce_options(_last_value())
    )


def timeseries(
    title: str,
    description: str,
    queries: Sequence[Query],
    unit: Unit,
    *,
    stacked: bool = False,
    bars: bool = False,
    min_value: float | None = 0,
    max_value: float | None = None,
    size: Size = HALF,
) -> timeseries_builder.Panel:
    """Series over the dashboard's range. Stacked series are filled more, so the
    stack reads as areas; bars are for counts per interval."""
    panel = (
        _frame(timeseries_builder.Panel(), title, description, queries, instant=False, size=size)
        .unit(unit)
        .draw_style(common.GraphDrawStyle.BARS if bars else common.GraphDrawStyle.LINE)
        .line_width(1)
        .fill_opacity(30 if stacked or bars else 10)
        .show_points(common.VisibilityMode.NEVER)
        .span_nulls(False)
        .stacking(
            common_builder.StackingConfig()
            .mode(common.StackingMode.NORMAL if stacked else common.StackingMode.NONE)
            .group("A")
        )
        .color_scheme(_color(model.FieldColorModeId.PALETTE_CLASSIC))
        .legend(
            common_builder.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.LIST)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
        )
        .tooltip(
            common_builder.VizTooltipOptions()
            .mode(common.TooltipDisplayMode.MULTI)
            .sort(common.SortOrder.DESCENDING)
        )
    )
    if min_value is not None:
        panel = panel.min(min_value)
    if max_value is not None:
        panel = panel.max(max_value)
    return panel


def up_timeline(
    title: str,
    description: str,
    query: Query,
    *,
    down: str,
    up: str,
    size: Size = HALF,
) -> statetimeline_builder.Panel:
    """One row per series, green while it is 1 and red while it is 0."""
    red, green = "red", "green"
    results = {
        "0": model.ValueMappingResult(text=down, color=red),
        "1": model.ValueMappingResult(text=up, color=green),
    }
    timeline = statetimeline_builder.Panel()
    return (
        _frame(timeline, title, description, [query], instant=False, size=size)
        .color_scheme(_color(model.FieldColorModeId.THRESHOLDS))
        .thresholds(_thresholds(((None, red), (1, green))))
        .mappings([model.ValueMap(options=results)])
        .show_value(common.VisibilityMode.NEVER)
        .merge_values(True)
        .row_height(0.8)
        .align_value(common.TimelineValueAlignment.LEFT)
        .legend(
            common_builder.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.LIST)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(False)
        )
    )


def _datasource_variable() -> dashboard_builder.DatasourceVariable:
    return (
        dashboard_builder.DatasourceVariable(DATASOURCE_VAR).label("Data source").type("prometheus")
    )


def query_variable(
    name: str, label: str, query: str, *, multi: bool
) -> dashboard_builder.QueryVariable:
    """Values from Prometheus' labels, refreshed with the time range; `multi` adds "All"."""
    variable = (
        dashboard_builder.QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query({"query": query, "refId": f"{name}-var"})
        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(model.VariableSort.ALPHABETICAL_ASC)
        .multi(multi)
        .include_all(multi)
    )
    # "All" as a regex, not Grafana's list of every value: a long list overflows the URL.
    return variable.all_value(".*") if multi else variable


def namespace_variable(*, multi: bool) -> dashboard_builder.QueryVariable:
    """The namespaces where a metrics sidecar runs."""
    values = promql.label_values(names.EXPORTER_BUILD_INFO, promql.NS)
    return query_variable(promql.NAMESPACE, "Namespace", values, multi=multi)


def custom_variable(
    name: str, label: str, values: Sequence[str], description: str
) -> dashboard_builder.CustomVariable:
    """A fixed choice; the first value is the default."""
    options = [model.VariableOption(text=v, value=v, selected=i == 0) for i, v in enumerate(values)]
    return (
        dashboard_builder.CustomVariable(name)
        .label(label)
        .description(description)
        .values(",".join(values))
        .current(model.VariableOption(text=values[0], value=values[0]))
        .options(options)
    )


Panel = (
    stat_builder.Panel
    | bargauge_builder.Panel
    | timeseries_builder.Panel
    | statetimeline_builder.Panel
)


@dataclass(frozen=True)
class Row:
    title: str
    panels: Sequence[Panel]


def dashboard(
    uid: str,
    title: str,
    description: str,
    variables: Sequence[cogbuilder.Builder[model.VariableModel]],
    rows: Sequence[Row],
) -> model.Dashboard:
    """A trainop dashboard: rows of panels laid out left to right, wrapping at 24 columns.
    Its data source is a variable, first, so one dashboard serves every Prometheus."""
    builder = (
        dashboard_builder.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(TAGS)
        .editable()
        .tooltip(model.DashboardCursorSync.CROSSHAIR)
        .time("now-6h", "now")
        .refresh("30s")
        .timezone("")
        .annotation(
            dashboard_builder.AnnotationQuery()
            .name("Annotations & Alerts")
            .datasource(model.DataSourceRef(type_val="grafana", uid="-- Grafana --"))
            .enable(True)
            .hide(True)
            .icon_color("rgba(0, 211, 255, 1)")
            .type("dashboard")
            .built_in(1)
        )
        .link(
            dashboard_builder.DashboardLink("trainop dashboards")
            .type(model.DashboardLinkType.DASHBOARDS)
            .tags(["trainop"])
            .as_dropdown(True)
            .include_vars(False)
            .keep_time(True)
        )
        .variables([_datasource_variable(), *variables])
    )
    for row in rows:
        builder = builder.with_row(dashboard_builder.Row(row.title))
        for panel in row.panels:
            builder = builder.with_panel(panel)
    built = builder.build()
    built.schema_version = SCHEMA_VERSION
    built.version = 1
    # Stable ids in reading order: links to a panel (viewPanel=N) survive regeneration.
    for number, built_panel in enumerate(built.panels or [], start=1):
        built_panel.id_val = number
    return built


def encode(built: model.Dashboard) -> Json:
    """The dashboard as Grafana's JSON model (plain dicts and lists)."""
    out: Json = json.loads(json.dumps(built, cls=JSONEncoder))
    return out


def render(doc: Json) -> str:
    """The file the chart ships: stable key order, so a diff shows only what changed."""
    return json.dumps(doc, indent=2) + "\n"

"""The PromQL the panels run, built from the metric definitions, never from typed names.

Exporter metrics come from ``trainop.exporter.names``; operator metrics from the
``prometheus_client`` objects in ``trainop.operator_metrics``, so renaming either renames
every panel that reads it. Purely computational.

Windows are typed: a range selector takes a :data:`Window`, which is either Grafana's
``$__rate_interval`` (at least four scrape intervals, so rate() and increase() always have
two samples to work with) or ``$__range`` (the whole dashboard range). A bare
``$__interval`` window cannot be written: at a short range it is shorter than two scrapes
and the panel goes blank, as the old "Energy used" panel did.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from prometheus_client.metrics import Histogram, MetricWrapperBase

from trainop.exporter import names

RATE_WINDOW: Final = "$__rate_interval"
RANGE_WINDOW: Final = "$__range"
Window = Literal["$__rate_interval", "$__range"]

# Grafana's step and its length in ms: the subquery that counts idle samples samples at
# the step and weighs each sample by it.
STEP: Final = "$__interval"
STEP_MS: Final = "$__interval_ms"

JOULES_PER_KWH: Final = 3_600_000
MS_PER_HOUR: Final = 3_600_000

# The dashboards' template variables, by name and as a query refers to them.
NAMESPACE: Final = "namespace"
TRAININGJOB: Final = "trainingjob"
IDLE_THRESHOLD: Final = "idle_threshold"
NAMESPACE_VAR: Final = f"${NAMESPACE}"
TRAININGJOB_VAR: Final = f"${TRAININGJOB}"
IDLE_THRESHOLD_VAR: Final = f"${IDLE_THRESHOLD}"

# Label names, from the exporter's definitions (the operator's per-job metrics use the same).
NS: Final = names.L_TRAININGJOB_NAMESPACE
JOB: Final = names.L_TRAININGJOB
POD: Final = names.L_TRAININGJOB_POD
BY_JOB: Final = (NS, JOB)


def operator_series(metric: MetricWrapperBase) -> str:
    """The series name a gauge or counter of the operator is exposed under."""
    family = next(iter(metric.describe()))
    # prometheus_client names a counter's family without the `_total` it exposes.
    return f"{family.name}_total" if family.type == "counter" else family.name


def operator_buckets(histogram: Histogram) -> str:
    return f"{next(iter(histogram.describe())).name}_bucket"


@dataclass(frozen=True)
class Selector:
    """A metric name and its label matchers, already rendered (``a="x", b=~"y"``)."""

    metric: str
    matchers: str = ""

    def __str__(self) -> str:
        return f"{self.metric}{{{self.matchers}}}" if self.matchers else self.metric

    def over(self, window: Window) -> str:
        return f"{self}[{window}]"


def fleet(metric: str) -> Selector:
    """A metric of the jobs in the Fleet dashboard's namespaces (a multi-value variable)."""
    return Selector(metric, f'{NS}=~"{NAMESPACE_VAR}"')


def one_job(metric: str) -> Selector:
    """A metric of the one job the Training job dashboard shows."""
    return Selector(metric, f'{NS}="{NAMESPACE_VAR}", {JOB}="{TRAININGJOB_VAR}"')


def by(labels: tuple[str, ...]) -> str:
    return f"by ({', '.join(labels)})"


def _sum(group: tuple[str, ...]) -> str:
    return f"sum {by(group)} " if group else "sum"


def legend(labels: tuple[str, ...]) -> str:
    """Grafana's legend for a series split by `labels`: ``{{ns}}/{{job}}``."""
    return "/".join(f"{{{{{label}}}}}" for label in labels)


def rate(selector: Selector, window: Window = RATE_WINDOW) -> str:
    return f"rate({selector.over(window)})"


def increase(selector: Selector, window: Window = RATE_WINDOW) -> str:
    return f"increase({selector.over(window)})"


def steps_per_second(selector: Selector) -> str:
    """The step counter's slope: deriv, since the step gauge drops on a restore."""
    return f"clamp_min(max(deriv({selector.over(RATE_WINDOW)})), 0)"


def kwh_over_range(selector: Selector, group: tuple[str, ...] = ()) -> str:
    """Energy used over the dashboard's range, in kWh, from the joule counters."""
    return f"{_sum(group)}({increase(selector, RANGE_WINDOW)}) / {JOULES_PER_KWH}"


def kwh_per_step(selector: Selector) -> str:
    """Energy used in each of Grafana's steps, in kWh: mean power over a rate window
    times the step's length. Bars that add up to the energy used, at any zoom: an
    increase() over the step itself returns nothing once a step holds fewer than two
    scrapes."""
    return f"sum({rate(selector)}) * {STEP_MS} / 1000 / {JOULES_PER_KWH}"


def idle_gpu_hours(utilization: Selector, group: tuple[str, ...] = ()) -> str:
    """GPU-hours spent below the idle threshold over the range: every step a GPU was
    idle counts its length."""
    idle = f"({utilization} < bool {IDLE_THRESHOLD_VAR})"
    counted = f"sum_over_time({idle}[{RANGE_WINDOW}:{STEP}])"
    return f"{_sum(group)}({counted}) * {STEP_MS} / {MS_PER_HOUR}"


def label_values(selector: Selector | str, label: str) -> str:
    """A Grafana query variable's values: every value `label` has on `selector`."""
    return f"label_values({selector}, {label})"

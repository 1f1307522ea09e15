"""trainop / Fleet: every TrainingJob, the GPUs they hold and what they cost. Pure."""

from __future__ import annotations

from grafana_foundation_sdk.models.dashboard import Dashboard

from trainop import operator_metrics as op
from trainop.dashboards import promql as q
from trainop.dashboards.panels import (
    THIRD,
    Query,
    Row,
    bargauge,
    custom_variable,
    dashboard,
    namespace_variable,
    stat,
    timeseries,
)
from trainop.exporter import names

UID = "trainop-fleet"
PER_JOB = q.legend(q.BY_JOB)


def _per_job(expr: str) -> Query:
    return Query(expr, PER_JOB)


def build_fleet() -> Dashboard:
    jobs = q.operator_series(op.JOBS)
    gpus = q.fleet(names.GPU_DEVICES)
    utilization = q.fleet(names.GPU_UTILIZATION)
    energy = q.fleet(names.GPU_ENERGY)
    by_job = q.by(q.BY_JOB)
    now = Row(
        "Now",
        [
            bargauge(
                "Jobs by phase",
                f"TrainingJobs the operator knows, by phase ({jobs}; all namespaces).",
                Query(f"max by (phase) ({jobs})", "{{phase}}"),
                "none",
                size=(6, 6),
            ),
            stat(
                "GPUs in use",
                "GPUs held by running worker pods (their metrics sidecars' count).",
                f"sum({gpus})",
                "none",
                decimals=0,
            ),
            stat(
                "Average GPU utilization",
                "Mean over every GPU of every running job.",
                f"avg({utilization})",
                "percentunit",
                decimals=1,
                steps=((None, "red"), (0.3, "orange"), (0.7, "green")),
            ),
            stat(
                "GPU power",
                "Power draw of every GPU of every running job, now.",
                f"sum({q.fleet(names.GPU_POWER)})",
                "watt",
                decimals=0,
            ),
            stat(
                "GPU energy over the range",
                "Energy used by the jobs' GPUs over the dashboard's time range "
                "(NVML energy counters).",
                q.kwh_over_range(energy),
                "kwatth",
                decimals=1,
            ),
            stat(
                "Idle GPU-hours over the range",
                "Hours GPUs held by a running job spent below the idle threshold, "
                "summed over GPUs.",
                q.idle_gpu_hours(utilization),
                "h",
                decimals=1,
                steps=((None, "green"), (1, "orange"), (10, "red")),
            ),
            stat(
                "Trainers reporting",
                f"Worker pods whose trainer wrote a fresh progress report ({names.TRAINING_UP}), "
                "of all worker pods with a sidecar.",
                f"sum({q.fleet(names.TRAINING_UP)})",
                "none",
                decimals=0,
            ),
        ],
    )
    over_time = Row(
        "Over time",
        [
            timeseries(
                "Jobs by phase",
                "",
                [Query(f"max by (phase) ({jobs})", "{{phase}}")],
                "none",
                stacked=True,
            ),
            timeseries(
                "GPUs in use by job",
                "",
                [_per_job(f"sum {by_job} ({gpus})")],
                "none",
                stacked=True,
            ),
            timeseries(
                "GPU utilization by job",
                "Mean over the job's GPUs.",
                [_per_job(f"avg {by_job} ({utilization})")],
                "percentunit",
                max_value=1,
                size=THIRD,
            ),
            timeseries(
                "Tensor core activity by job",
                "Mean over the job's GPUs: how much of the time their tensor cores were busy, "
                "which utilization (a kernel was running) cannot tell. A job with high "
                "utilization and low tensor activity waits on data or communication. From "
                "NVML's GPM profiling: Hopper and newer GPUs only.",
                [_per_job(f"avg {by_job} ({q.fleet(names.GPU_TENSOR_ACTIVE)})")],
                "percentunit",
                max_value=1,
                size=THIRD,
            ),
            timeseries(
                "GPU power by job",
                "Measured from the energy counters, so no spike between scrapes is missed.",
                [_per_job(f"sum {by_job} ({q.rate(energy)})")],
                "watt",
                stacked=True,
                size=THIRD,
            ),
            bargauge(
                "Energy by job over the range",
                "",
                _per_job(f"sort_desc({q.kwh_over_range(energy, q.BY_JOB)})"),
                "kwatth",
            ),
            bargauge(
                "Idle GPU-hours by job over the range",
                "GPU-hours below the idle threshold.",
                _per_job(f"sort_desc({q.idle_gpu_hours(utilization, q.BY_JOB)})"),
                "h",
            ),
        ],
    )
    reconcile = q.operator_buckets(op.RECONCILE_SECONDS)
    reconcile_rate = f"sum by (le) ({q.rate(q.Selector(reconcile))})"
    operator = Row(
        "Operator",
        [
            timeseries(
                "Workers replaced by the operator",
                "Per failure reason; counted=false are disruptions the job did not cause "
                "(Preempted, Evicted, NodeLost).",
                [
                    Query(
                        "sum by (reason, counted) "
                        f"({q.increase(q.Selector(q.operator_series(op.RESTARTS)))})",
                        "{{reason}} (counted={{counted}})",
                    )
                ],
                "none",
                bars=True,
                size=THIRD,
            ),
            timeseries(
                "Reconcile duration",
                "One reconcile of one TrainingJob, API calls included.",
                [
                    Query(f"histogram_quantile({quantile}, {reconcile_rate})", f"p{percent}")
                    for quantile, percent in ((0.5, 50), (0.99, 99))
                ],
                "s",
                size=THIRD,
            ),
            timeseries(
                "Kubernetes API requests",
                "",
                [
                    Query(
                        "sum by (verb, resource) "
                        f"({q.rate(q.Selector(q.operator_series(op.API_REQUESTS)))})",
                        "{{verb}} {{resource}}",
                    )
                ],
                "reqps",
                stacked=True,
                size=THIRD,
            ),
            timeseries(
                "Kubernetes API errors and failed reconciles",
                "404 on a get is normal: the operator checks whether an object exists.",
                [
                    Query(
                        "sum by (verb, resource, code) "
                        f"({q.rate(q.Selector(q.operator_series(op.API_ERRORS)))})",
                        "{{code}} {{verb}} {{resource}}",
                    ),
                    Query(
                        f"sum({q.rate(q.Selector(q.operator_series(op.RECONCILE_ERRORS)))})",
                        "failed reconciles",
                    ),
                ],
                "reqps",
                size=THIRD,
            ),
            timeseries(
                "Metrics sidecars: CPU",
                "CPU cores used by every metrics sidecar together (its own cost).",
                [Query(f"sum({q.rate(q.Selector(names.EXPORTER_PROCESS_CPU))})", "all sidecars")],
                "short",
                size=THIRD,
            ),
            timeseries(
                "Metrics sidecars: memory",
                "Largest resident memory of one sidecar.",
                [Query(f"max({names.EXPORTER_PROCESS_RSS})", "largest sidecar")],
                "bytes",
                size=THIRD,
            ),
        ],
    )
    return dashboard(
        UID,
        "trainop / Fleet",
        "Every TrainingJob: phases, GPUs held, utilization, power, energy and idle GPU-hours.",
        [
            namespace_variable(multi=True),
            custom_variable(
                q.IDLE_THRESHOLD,
                "Idle below",
                ["0.05", "0.1", "0.2"],
                "A GPU below this utilization (0-1) counts as idle.",
            ),
        ],
        [now, over_time, operator],
    )

"""trainop / Training job: one TrainingJob's progress, GPUs, energy, loss and restarts. Pure."""

from __future__ import annotations

from grafana_foundation_sdk.builders import common as common_builder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model

from trainop import operator_metrics as op
from trainop.dashboards import promql as q
from trainop.dashboards.panels import (
    QUARTER,
    THIRD,
    Query,
    Row,
    dashboard,
    namespace_variable,
    query_variable,
    stat,
    timeseries,
    up_timeline,
)
from trainop.exporter import names

UID = "trainop-job"
PER_GPU = f"{{{{{q.POD}}}}} GPU {{{{{names.L_GPU}}}}}"
POD = f"{{{{{q.POD}}}}}"


def build_trainingjob() -> model.Dashboard:
    step = q.one_job(names.TRAINING_STEP)
    energy = q.one_job(names.GPU_ENERGY)
    steps_per_second = q.steps_per_second(step)
    now = Row(
        "Now",
        [
            stat(
                "Progress",
                "Completed fraction of the planned steps.",
                f"max({q.one_job(names.TRAINING_PROGRESS)})",
                "percentunit",
                decimals=1,
                size=(4, 5),
            ),
            stat(
                "Step",
                "Last completed optimizer step.",
                f"max({step})",
                "none",
                decimals=0,
                size=(4, 5),
            ),
            stat(
                "Steps per second",
                "From the step counter's slope.",
                steps_per_second,
                "none",
                decimals=2,
                size=(4, 5),
            ),
            stat(
                "World size",
                "Ranks in the current worker group.",
                f"max({q.one_job(names.TRAINING_WORLD_SIZE)})",
                "none",
                decimals=0,
                size=(3, 5),
            ),
            stat(
                "GPUs",
                "GPUs held by the job's worker pods.",
                f"sum({q.one_job(names.GPU_DEVICES)})",
                "none",
                decimals=0,
                size=(3, 5),
            ),
            stat(
                "Energy over the range",
                "GPU energy of the job over the dashboard's time range.",
                q.kwh_over_range(energy),
                "kwatth",
                decimals=2,
                size=(3, 5),
            ),
            stat(
                "Joules per step over the range",
                "GPU energy over the range divided by the steps made in it.",
                f"sum({q.increase(energy, q.RANGE_WINDOW)}) / "
                f"((max(max_over_time({step.over(q.RANGE_WINDOW)})) - "
                f"min(min_over_time({step.over(q.RANGE_WINDOW)}))) > 0)",
                "joule",
                decimals=0,
                size=(3, 5),
            ),
        ],
    )
    gpus = Row(
        "GPUs",
        [
            timeseries(
                "GPU utilization",
                "Per GPU.",
                [Query(str(q.one_job(names.GPU_UTILIZATION)), PER_GPU)],
                "percentunit",
                max_value=1,
            ),
            timeseries(
                "Efficiency: is the job using its GPUs?",
                "Mean over the job's GPUs. Utilization only says a kernel was running; tensor "
                "activity says how much of the time the tensor cores, where a training step's "
                "matrix math runs, were busy. High utilization with low tensor activity points "
                "at data loading, communication or small kernels. From NVML's GPM profiling "
                f"(Hopper and newer): empty for GPUs with {names.GPU_PROFILING_SUPPORTED} 0.",
                [
                    Query(f"avg({q.one_job(names.GPU_TENSOR_ACTIVE)})", "tensor cores active"),
                    Query(f"avg({q.one_job(names.GPU_SM_ACTIVE)})", "SMs active"),
                    Query(f"avg({q.one_job(names.GPU_DRAM_ACTIVE)})", "memory bandwidth"),
                    Query(f"avg({q.one_job(names.GPU_UTILIZATION)})", "utilization"),
                ],
                "percentunit",
                max_value=1,
            ),
            timeseries(
                "GPU memory used",
                "Per GPU.",
                [Query(str(q.one_job(names.GPU_MEMORY_USED)), PER_GPU)],
                "bytes",
            ),
            timeseries(
                "GPU power",
                "Per GPU, with its enforced power limit.",
                [
                    Query(str(q.one_job(names.GPU_POWER)), PER_GPU),
                    Query(str(q.one_job(names.GPU_POWER_LIMIT)), f"limit {PER_GPU}"),
                ],
                "watt",
            ),
            timeseries(
                "GPU temperature",
                "Per GPU: the GPU core, and its memory (HBM) where the board reports it.",
                [
                    Query(str(q.one_job(names.GPU_TEMPERATURE)), PER_GPU),
                    Query(str(q.one_job(names.GPU_MEMORY_TEMPERATURE)), f"memory {PER_GPU}"),
                ],
                "celsius",
                min_value=None,
                size=QUARTER,
            ),
            timeseries(
                "Clocks held down",
                "GPUs whose clocks are held down, by NVML clock-event reason "
                "(power cap, thermal, idle...).",
                [
                    Query(
                        f"sum by ({names.L_REASON}) ({q.one_job(names.GPU_CLOCK_EVENT_ACTIVE)})",
                        f"{{{{{names.L_REASON}}}}}",
                    )
                ],
                "none",
                stacked=True,
                size=QUARTER,
            ),
            timeseries(
                "Interconnect throughput",
                "Bytes per second over all of the job's GPUs: NVLink (all links) carries the "
                "collectives between GPUs, PCIe the data from the host. From NVML's GPM "
                "profiling (Hopper and newer).",
                [
                    Query(f"sum({q.one_job(metric)})", legend)
                    for metric, legend in (
                        (names.GPU_NVLINK_TRANSMIT, "NVLink sent"),
                        (names.GPU_NVLINK_RECEIVE, "NVLink received"),
                        (names.GPU_PCIE_TRANSMIT, "PCIe sent"),
                        (names.GPU_PCIE_RECEIVE, "PCIe received"),
                    )
                ],
                "Bps",
            ),
        ],
    )
    training = Row(
        "Training",
        [
            timeseries(
                "Steps per second",
                "Measured from the step counter; and from the trainer's last step time.",
                [
                    Query(steps_per_second, "measured"),
                    Query(
                        f"1 / max({q.one_job(names.TRAINING_STEP_DURATION)})",
                        "1 / last step time",
                    ),
                ],
                "none",
                size=THIRD,
            ),
            timeseries(
                "Loss",
                "Last reported training loss, per worker pod.",
                [Query(str(q.one_job(names.TRAINING_LOSS)), POD)],
                "none",
                min_value=None,
                size=THIRD,
            ),
            timeseries(
                "Samples per second",
                "Training throughput as the trainer reports it.",
                [Query(f"max({q.one_job(names.TRAINING_SAMPLES_PER_SECOND)})", "samples/s")],
                "none",
                size=THIRD,
            ),
            timeseries(
                "Energy per step",
                "GPU joules per optimizer step (no value while no step is made).",
                [Query(f"sum({q.rate(energy)}) / ({steps_per_second} > 0)", "J/step")],
                "joule",
            ),
            timeseries(
                "Energy used",
                "GPU energy used in each interval (from the job's GPU power, measured by "
                "the energy counters).",
                [Query(q.kwh_per_step(energy), "kWh per interval")],
                "kwatth",
                bars=True,
            ),
        ],
    )
    restarts_used = q.one_job(q.operator_series(op.JOB_RESTARTS))
    budget = q.one_job(q.operator_series(op.JOB_RESTART_BUDGET))
    replaced = (
        timeseries(
            "Restart timeline: workers replaced by the operator",
            "Every worker failure the operator counted (status.restarts), against the job's "
            "restart budget (failurePolicy.backoffLimit); bars mark when they happened. A "
            "replacement pod keeps its name, so it barely shows in the pod timeline: it shows "
            "here. Free replacements (Preempted, Evicted, NodeLost) use no budget and are on "
            "the Fleet dashboard.",
            [
                Query(f"max({restarts_used})", "restarts used"),
                Query(f"max({budget})", "restart budget"),
                Query(f"max({q.increase(restarts_used)})", "restarts in interval"),
            ],
            "none",
        )
        # Steps, not slopes: the count changes at one moment.
        .line_interpolation(common.LineInterpolation.STEP_AFTER)
        .line_width(2)
        .fill_opacity(0)
        .span_nulls(True)
        .decimals(0)
        # In series order (used, budget, in interval), not by value.
        .tooltip(
            common_builder.VizTooltipOptions()
            .mode(common.TooltipDisplayMode.MULTI)
            .sort(common.SortOrder.NONE)
        )
        .override_by_query(
            "B",
            [
                model.DynamicConfigValue(
                    id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]}
                ),
                model.DynamicConfigValue(
                    id_val="color", value={"mode": "fixed", "fixedColor": "red"}
                ),
            ],
        )
        .override_by_query(
            "C",
            [
                model.DynamicConfigValue(id_val="custom.drawStyle", value="bars"),
                model.DynamicConfigValue(id_val="custom.fillOpacity", value=80),
                model.DynamicConfigValue(
                    id_val="color", value={"mode": "fixed", "fixedColor": "orange"}
                ),
            ],
        )
    )
    restarts = Row(
        "Restarts",
        [
            up_timeline(
                "Restart timeline: worker pods",
                "One row per worker pod while its sidecar runs: green while the trainer "
                "reports, red while it does not. A replacement pod reuses its predecessor's "
                "name and row; the panel beside this one counts the replacements.",
                Query(f"max by ({q.POD}) ({q.one_job(names.TRAINING_UP)})", POD),
                down="not reporting",
                up="training",
            ),
            replaced,
            timeseries(
                "Worker-group restarts and world size",
                "In-place restarts torchrun made in each pod, and the ranks of the worker group.",
                [
                    Query(
                        f"sum by ({q.POD}) ({q.increase(q.one_job(names.TRAINING_RESTARTS))})",
                        f"restarts {POD}",
                    ),
                    Query(f"max({q.one_job(names.TRAINING_WORLD_SIZE)})", "world size"),
                ],
                "none",
                size=THIRD,
            ),
            timeseries(
                "Checkpoint age",
                "Seconds since the last saved checkpoint: what a failure now would cost.",
                [Query(f"min({q.one_job(names.TRAINING_CHECKPOINT_AGE)})", "age")],
                "s",
                size=THIRD,
            ),
            timeseries(
                "Sidecar health",
                "1 while the sidecar reads NVML (gpu) and a fresh progress report (training); "
                "read errors per interval.",
                [
                    Query(f"min({q.one_job(names.GPU_UP)})", "gpu up"),
                    Query(f"min({q.one_job(names.TRAINING_UP)})", "training up"),
                    Query(
                        f"sum by ({names.L_SOURCE}) "
                        f"({q.increase(q.one_job(names.EXPORTER_READ_ERRORS))})",
                        f"read errors {{{{{names.L_SOURCE}}}}}",
                    ),
                ],
                "none",
                size=THIRD,
            ),
        ],
    )
    jobs = q.label_values(
        q.Selector(names.EXPORTER_BUILD_INFO, f'{q.NS}="{q.NAMESPACE_VAR}"'), q.JOB
    )
    return dashboard(
        UID,
        "trainop / Training job",
        "One TrainingJob: progress, GPUs, energy per step, loss and restarts.",
        [
            namespace_variable(multi=False),
            query_variable(q.TRAININGJOB, "Training job", jobs, multi=False),
        ],
        [now, gpus, training, restarts],
    )

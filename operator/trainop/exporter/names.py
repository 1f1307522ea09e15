"""Every metric and label the exporter emits: the one source of truth.

Dashboards and alert rules are checked against this module, and the tests
check the exporter's real exposition against it, so a name lives here or
nowhere. Purely declarative: no I/O.

Conventions (see shared/FIELD.md): prefix ``trainop_``, base units (seconds,
bytes, joules, watts, hertz, celsius, ratio 0-1), ``_total`` only on counters.
The exporter never emits ``job``, ``instance``, ``pod`` or ``namespace``:
Prometheus attaches those as target labels, and a clash would rename ours to
``exported_*``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

# --- labels -----------------------------------------------------------------
# Job identity, on every series, from the pod's env (trainop_runtime.contract).
L_TRAININGJOB: Final = "trainingjob"
L_TRAININGJOB_NAMESPACE: Final = "trainingjob_namespace"
L_TRAININGJOB_POD: Final = "trainingjob_pod"
IDENTITY_LABELS: Final = (L_TRAININGJOB, L_TRAININGJOB_NAMESPACE, L_TRAININGJOB_POD)

# Per GPU. `gpu` is NVML's index on the node (as dcgm-exporter and nvidia-smi
# number them), so it lines up with node-level tools; `gpu_uuid` is the join key.
# `node` (the pod's spec.nodeName, from the downward API) says which host holds the
# GPU; it is left out, not empty, where the sidecar is not told its node.
L_GPU: Final = "gpu"
L_GPU_UUID: Final = "gpu_uuid"
L_MODEL: Final = "model"
L_NODE: Final = "node"
GPU_LABELS: Final = (L_GPU, L_GPU_UUID, L_MODEL, L_NODE)

L_REASON: Final = "reason"
L_ERROR_TYPE: Final = "error_type"
L_SOURCE: Final = "source"
L_ZONE: Final = "zone"
L_ZONE_NAME: Final = "zone_name"
L_VERSION: Final = "version"
L_DRIVER_VERSION: Final = "driver_version"

# Labels a scrape config attaches itself; the exporter must never emit them.
RESERVED_TARGET_LABELS: Final = frozenset({"job", "instance", "pod", "namespace", "container"})

# Values of L_REASON, one per NVML clock-event bit (nvmlClocksEventReason*).
CLOCK_EVENT_REASONS: Final[tuple[tuple[int, str], ...]] = (
    (0x001, "gpu_idle"),
    (0x002, "applications_clocks_setting"),
    (0x004, "sw_power_cap"),
    (0x008, "hw_slowdown"),
    (0x010, "sync_boost"),
    (0x020, "sw_thermal_slowdown"),
    (0x040, "hw_thermal_slowdown"),
    (0x080, "hw_power_brake_slowdown"),
    (0x100, "display_clock_setting"),
)
ECC_CORRECTED: Final = "corrected"
ECC_UNCORRECTED: Final = "uncorrected"

# Values of L_SOURCE on the read-error counter.
SOURCE_NVML: Final = "nvml"
SOURCE_PROGRESS: Final = "progress"
SOURCE_GPUS_FILE: Final = "gpus_file"
SOURCE_RAPL: Final = "rapl"

# --- metrics ----------------------------------------------------------------
GPU_UP: Final = "trainop_gpu_up"
GPU_DEVICES: Final = "trainop_gpu_devices"
GPU_ASSIGNED_DEVICES: Final = "trainop_gpu_assigned_devices"
GPU_SAMPLE_AGE: Final = "trainop_gpu_sample_age_seconds"
GPU_DEVICE_UP: Final = "trainop_gpu_device_up"
GPU_DRIVER_INFO: Final = "trainop_gpu_driver_info"
GPU_UTILIZATION: Final = "trainop_gpu_utilization_ratio"
GPU_MEMORY_UTILIZATION: Final = "trainop_gpu_memory_utilization_ratio"
GPU_MEMORY_USED: Final = "trainop_gpu_memory_used_bytes"
GPU_MEMORY_TOTAL: Final = "trainop_gpu_memory_total_bytes"
GPU_POWER: Final = "trainop_gpu_power_watts"
GPU_POWER_LIMIT: Final = "trainop_gpu_power_limit_watts"
GPU_ENERGY: Final = "trainop_gpu_energy_joules_total"
GPU_TEMPERATURE: Final = "trainop_gpu_temperature_celsius"
GPU_SM_CLOCK: Final = "trainop_gpu_sm_clock_hertz"
GPU_MEMORY_TEMPERATURE: Final = "trainop_gpu_memory_temperature_celsius"
GPU_MEMORY_CLOCK: Final = "trainop_gpu_memory_clock_hertz"
GPU_CLOCK_EVENT_ACTIVE: Final = "trainop_gpu_clock_event_active"
GPU_ECC_ERRORS: Final = "trainop_gpu_ecc_errors_total"
GPU_XID_ERRORS: Final = "trainop_gpu_xid_errors_total"
GPU_LAST_XID: Final = "trainop_gpu_last_xid"
# Profiling (NVML's GPM API, Hopper and newer): averages over one sampler interval.
GPU_PROFILING_SUPPORTED: Final = "trainop_gpu_profiling_supported"
GPU_SM_ACTIVE: Final = "trainop_gpu_sm_active_ratio"
GPU_SM_OCCUPANCY: Final = "trainop_gpu_sm_occupancy_ratio"
GPU_TENSOR_ACTIVE: Final = "trainop_gpu_tensor_active_ratio"
GPU_DRAM_ACTIVE: Final = "trainop_gpu_dram_active_ratio"
GPU_FP16_ACTIVE: Final = "trainop_gpu_fp16_active_ratio"
GPU_FP32_ACTIVE: Final = "trainop_gpu_fp32_active_ratio"
GPU_FP64_ACTIVE: Final = "trainop_gpu_fp64_active_ratio"
GPU_PCIE_TRANSMIT: Final = "trainop_gpu_pcie_transmit_bytes_per_second"
GPU_PCIE_RECEIVE: Final = "trainop_gpu_pcie_receive_bytes_per_second"
GPU_NVLINK_TRANSMIT: Final = "trainop_gpu_nvlink_transmit_bytes_per_second"
GPU_NVLINK_RECEIVE: Final = "trainop_gpu_nvlink_receive_bytes_per_second"
GPU_REMAPPED_ROWS: Final = "trainop_gpu_remapped_rows_total"
GPU_ROW_REMAP_PENDING: Final = "trainop_gpu_row_remap_pending"
GPU_ROW_REMAP_FAILED: Final = "trainop_gpu_row_remap_failed"
GPU_PCIE_REPLAYS: Final = "trainop_gpu_pcie_replays_total"

TRAINING_UP: Final = "trainop_training_up"
TRAINING_STEP: Final = "trainop_training_step"
TRAINING_STEP_TARGET: Final = "trainop_training_step_target"
TRAINING_PROGRESS: Final = "trainop_training_progress_ratio"
TRAINING_SAMPLES: Final = "trainop_training_samples"
TRAINING_SAMPLES_PER_SECOND: Final = "trainop_training_samples_per_second"
TRAINING_LOSS: Final = "trainop_training_loss"
TRAINING_STEP_DURATION: Final = "trainop_training_step_duration_seconds"
TRAINING_WORLD_SIZE: Final = "trainop_training_world_size"
TRAINING_RESTARTS: Final = "trainop_training_restarts_total"
TRAINING_CHECKPOINT_STEP: Final = "trainop_training_checkpoint_step"
TRAINING_CHECKPOINT_TIMESTAMP: Final = "trainop_training_checkpoint_timestamp_seconds"
TRAINING_CHECKPOINT_AGE: Final = "trainop_training_checkpoint_age_seconds"
TRAINING_REPORT_TIMESTAMP: Final = "trainop_training_report_timestamp_seconds"
TRAINING_REPORT_AGE: Final = "trainop_training_report_age_seconds"

CPU_ENERGY_UP: Final = "trainop_cpu_energy_up"
CPU_ENERGY: Final = "trainop_cpu_energy_joules_total"

EXPORTER_BUILD_INFO: Final = "trainop_exporter_build_info"
EXPORTER_READ_ERRORS: Final = "trainop_exporter_read_errors_total"
EXPORTER_COLLECT_DURATION: Final = "trainop_exporter_collect_duration_seconds"
# prometheus_client's ProcessCollector under our prefix, so users can check
# the exporter's own CPU and memory cost in production.
PROCESS_NAMESPACE: Final = "trainop_exporter"
EXPORTER_PROCESS_CPU: Final = "trainop_exporter_process_cpu_seconds_total"
EXPORTER_PROCESS_RSS: Final = "trainop_exporter_process_resident_memory_bytes"
EXPORTER_PROCESS_VMS: Final = "trainop_exporter_process_virtual_memory_bytes"
EXPORTER_PROCESS_START: Final = "trainop_exporter_process_start_time_seconds"
EXPORTER_PROCESS_OPEN_FDS: Final = "trainop_exporter_process_open_fds"
EXPORTER_PROCESS_MAX_FDS: Final = "trainop_exporter_process_max_fds"

Kind = Literal["gauge", "counter"]


@dataclass(frozen=True)
class MetricSpec:
    """What one metric family is: its exposition name, type, help and own labels.

    ``labels`` excludes the identity labels, which every series carries.
    """

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()


_G = GPU_LABELS

SPECS: Final[tuple[MetricSpec, ...]] = (
    MetricSpec(
        GPU_UP,
        "gauge",
        "1 if NVML works and every GPU listed in gpus.json was read on the last sample, else 0.",
    ),
    MetricSpec(GPU_DEVICES, "gauge", "Number of GPUs exported for this pod."),
    MetricSpec(
        GPU_ASSIGNED_DEVICES,
        "gauge",
        "GPUs the trainer container was given (the UUIDs in gpus.json); absent until it "
        "writes the file. 0 for a CPU-only trainer, whose trainop_gpu_up 0 is no fault.",
    ),
    MetricSpec(
        GPU_SAMPLE_AGE,
        "gauge",
        "Age of the GPU readings served, in seconds: NVML is read by a sampler thread on "
        "its own clock, never inside a scrape.",
    ),
    MetricSpec(
        GPU_DEVICE_UP,
        "gauge",
        "1 if this GPU was read on the last sample; 0 while it is lost or a call to it "
        "hangs in the driver (its readings are then absent).",
        _G,
    ),
    MetricSpec(GPU_DRIVER_INFO, "gauge", "NVIDIA driver version (always 1).", (L_DRIVER_VERSION,)),
    MetricSpec(GPU_UTILIZATION, "gauge", "Fraction of time a kernel ran on the GPU.", _G),
    MetricSpec(
        GPU_MEMORY_UTILIZATION,
        "gauge",
        "Fraction of time device memory was being read or written.",
        _G,
    ),
    MetricSpec(GPU_MEMORY_USED, "gauge", "Device memory in use, in bytes.", _G),
    MetricSpec(GPU_MEMORY_TOTAL, "gauge", "Device memory installed, in bytes.", _G),
    MetricSpec(GPU_POWER, "gauge", "Power draw, in watts.", _G),
    MetricSpec(GPU_POWER_LIMIT, "gauge", "Enforced power limit, in watts.", _G),
    MetricSpec(
        GPU_ENERGY,
        "counter",
        "Energy used since the driver loaded, in joules; rate() gives watts.",
        _G,
    ),
    MetricSpec(GPU_TEMPERATURE, "gauge", "GPU core temperature, in degrees Celsius.", _G),
    MetricSpec(GPU_SM_CLOCK, "gauge", "SM clock, in hertz.", _G),
    MetricSpec(
        GPU_MEMORY_TEMPERATURE,
        "gauge",
        "Device memory (HBM) temperature, in degrees Celsius; absent where the board has "
        "no such sensor.",
        _G,
    ),
    MetricSpec(GPU_MEMORY_CLOCK, "gauge", "Device memory clock, in hertz.", _G),
    MetricSpec(
        GPU_CLOCK_EVENT_ACTIVE,
        "gauge",
        "1 while this reason holds the clocks down (throttling, idle, caps), else 0.",
        (*_G, L_REASON),
    ),
    MetricSpec(
        GPU_ECC_ERRORS,
        "counter",
        "Volatile ECC memory errors since the driver loaded.",
        (*_G, L_ERROR_TYPE),
    ),
    MetricSpec(
        GPU_XID_ERRORS,
        "counter",
        "Critical XID errors seen since the exporter started.",
        _G,
    ),
    MetricSpec(GPU_LAST_XID, "gauge", "Code of the last critical XID error, 0 if none.", _G),
    MetricSpec(
        GPU_PROFILING_SUPPORTED,
        "gauge",
        "1 if NVML's GPM profiling metrics (SM, tensor, DRAM, pipe activity, PCIe and NVLink "
        "throughput) are read from this GPU; 0 where it has none (before Hopper), so their "
        "absence is no fault.",
        _G,
    ),
    MetricSpec(
        GPU_SM_ACTIVE,
        "gauge",
        "Fraction of SM time with at least one warp resident, averaged over the SMs and the "
        "last sampling interval (GPM; dcgm-exporter's PROF_SM_ACTIVE).",
        _G,
    ),
    MetricSpec(
        GPU_SM_OCCUPANCY,
        "gauge",
        "Resident warps as a fraction of the SMs' maximum, over the last sampling interval (GPM).",
        _G,
    ),
    MetricSpec(
        GPU_TENSOR_ACTIVE,
        "gauge",
        "Fraction of time the tensor cores ran any matrix instruction, over the last sampling "
        "interval (GPM): how much of the GPU a training job really uses.",
        _G,
    ),
    MetricSpec(
        GPU_DRAM_ACTIVE,
        "gauge",
        "Device memory bandwidth used, as a fraction of its peak, over the last sampling "
        "interval (GPM).",
        _G,
    ),
    MetricSpec(
        GPU_FP16_ACTIVE,
        "gauge",
        "Fraction of time the SMs ran non-tensor FP16 math, over the last sampling interval (GPM).",
        _G,
    ),
    MetricSpec(
        GPU_FP32_ACTIVE,
        "gauge",
        "Fraction of time the SMs ran non-tensor FP32 math, over the last sampling interval (GPM).",
        _G,
    ),
    MetricSpec(
        GPU_FP64_ACTIVE,
        "gauge",
        "Fraction of time the SMs ran non-tensor FP64 math, over the last sampling interval (GPM).",
        _G,
    ),
    MetricSpec(
        GPU_PCIE_TRANSMIT,
        "gauge",
        "PCIe traffic from this GPU, in bytes per second, over the last sampling interval (GPM).",
        _G,
    ),
    MetricSpec(
        GPU_PCIE_RECEIVE,
        "gauge",
        "PCIe traffic to this GPU, in bytes per second, over the last sampling interval (GPM).",
        _G,
    ),
    MetricSpec(
        GPU_NVLINK_TRANSMIT,
        "gauge",
        "NVLink traffic sent by this GPU over all its links, in bytes per second, over the "
        "last sampling interval (GPM); absent without NVLink.",
        _G,
    ),
    MetricSpec(
        GPU_NVLINK_RECEIVE,
        "gauge",
        "NVLink traffic received by this GPU over all its links, in bytes per second, over "
        "the last sampling interval (GPM); absent without NVLink.",
        _G,
    ),
    MetricSpec(
        GPU_REMAPPED_ROWS,
        "counter",
        "Memory rows remapped to spares over the GPU's life (kept in its InfoROM), by the "
        "kind of ECC error that caused it.",
        (*_G, L_ERROR_TYPE),
    ),
    MetricSpec(
        GPU_ROW_REMAP_PENDING,
        "gauge",
        "1 while a row remapping waits for a GPU reset to take effect, else 0.",
        _G,
    ),
    MetricSpec(
        GPU_ROW_REMAP_FAILED,
        "gauge",
        "1 if a row remapping has failed (no spare row left): the GPU needs service, else 0.",
        _G,
    ),
    MetricSpec(
        GPU_PCIE_REPLAYS,
        "counter",
        "PCIe replays the device counted (packets the link had to resend); a rising rate "
        "means a bad link, riser or slot.",
        _G,
    ),
    MetricSpec(
        TRAINING_UP,
        "gauge",
        "1 if the trainer's progress report was read and is fresh, else 0.",
    ),
    MetricSpec(TRAINING_STEP, "gauge", "Last completed optimizer step (drops on a restore)."),
    MetricSpec(TRAINING_STEP_TARGET, "gauge", "Step at which training ends."),
    MetricSpec(TRAINING_PROGRESS, "gauge", "Completed fraction of the planned steps."),
    MetricSpec(TRAINING_SAMPLES, "gauge", "Samples processed by all ranks (drops on a restore)."),
    MetricSpec(TRAINING_SAMPLES_PER_SECOND, "gauge", "Training throughput, as reported."),
    MetricSpec(TRAINING_LOSS, "gauge", "Last reported training loss."),
    MetricSpec(TRAINING_STEP_DURATION, "gauge", "Wall time of the last step, in seconds."),
    MetricSpec(TRAINING_WORLD_SIZE, "gauge", "Number of ranks in the current worker group."),
    MetricSpec(TRAINING_RESTARTS, "counter", "Worker-group restarts seen by this pod's agent."),
    MetricSpec(TRAINING_CHECKPOINT_STEP, "gauge", "Step of the last saved checkpoint."),
    MetricSpec(TRAINING_CHECKPOINT_TIMESTAMP, "gauge", "Unix time of the last saved checkpoint."),
    MetricSpec(
        TRAINING_CHECKPOINT_AGE,
        "gauge",
        "Seconds since the last saved checkpoint, at scrape time.",
    ),
    MetricSpec(TRAINING_REPORT_TIMESTAMP, "gauge", "Unix time of the trainer's last report."),
    MetricSpec(
        TRAINING_REPORT_AGE,
        "gauge",
        "Seconds since the trainer's last report, at scrape time.",
    ),
    MetricSpec(CPU_ENERGY_UP, "gauge", "1 if the node's RAPL energy counters were readable."),
    MetricSpec(
        CPU_ENERGY,
        "counter",
        "CPU package or DRAM energy of the whole node (not only this pod), in joules; "
        "zones do not overlap, so sum() is the node's total.",
        (L_ZONE, L_ZONE_NAME),
    ),
    MetricSpec(EXPORTER_BUILD_INFO, "gauge", "trainop exporter version (always 1).", (L_VERSION,)),
    MetricSpec(
        EXPORTER_READ_ERRORS,
        "counter",
        "Failed reads since the exporter started, by source.",
        (L_SOURCE,),
    ),
    MetricSpec(
        EXPORTER_COLLECT_DURATION,
        "gauge",
        "Time the previous scrape spent reading its sources, in seconds.",
    ),
)

SPEC_BY_NAME: Final = {spec.name: spec for spec in SPECS}

# Emitted by prometheus_client's ProcessCollector (without identity labels:
# the target labels say which pod), not built from SPECS.
PROCESS_METRICS: Final = (
    EXPORTER_PROCESS_CPU,
    EXPORTER_PROCESS_RSS,
    EXPORTER_PROCESS_VMS,
    EXPORTER_PROCESS_START,
    EXPORTER_PROCESS_OPEN_FDS,
    EXPORTER_PROCESS_MAX_FDS,
)

ALL_METRIC_NAMES: Final = frozenset({spec.name for spec in SPECS} | set(PROCESS_METRICS))

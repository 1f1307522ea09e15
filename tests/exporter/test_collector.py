"""The collector against FakeNVML and real files: what a user sees on /metrics."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.exporter.helpers import (
    IDENTITY,
    NODE,
    NOW,
    Exposition,
    fake_powercap,
    gpus,
    make_collector,
    scrape,
    uuid,
    write_gpus_file,
    write_progress,
)
from trainop.exporter import names as n
from trainop.exporter.collector import TrainopCollector
from trainop.exporter.fake_nvml import FakeGpu, FakeNVML
from trainop.exporter.gpu import GPM_METRICS, GpuReader
from trainop.exporter.nvml import Nvml
from trainop.exporter.rapl import RaplReader
from trainop_runtime import contract

GPU_SERIES = (n.GPU_POWER, n.GPU_ENERGY, n.GPU_UTILIZATION, n.GPU_MEMORY_USED)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    d = tmp_path / "run"
    d.mkdir()
    return d


def exported_uuids(expo: Exposition) -> set[str]:
    return {s.labels[n.L_GPU_UUID] for s in expo.series(n.GPU_POWER)}


# --- training progress: missing, torn, stale, fresh ------------------------
def _torn(run_dir: Path) -> None:
    path = run_dir / contract.PROGRESS_FILE
    path.write_text('{"step": 12, "loss": 2.')
    os.utime(path, (NOW - 5, NOW - 5))


def _binary(run_dir: Path) -> None:
    path = run_dir / contract.PROGRESS_FILE
    path.write_bytes(b"\xff\xfe\x00garbage")
    os.utime(path, (NOW - 5, NOW - 5))


@pytest.mark.parametrize(
    ("prepare", "up", "step", "age", "progress_errors"),
    [
        pytest.param(lambda d: None, 0.0, None, None, 0.0, id="missing: trainer not started"),
        # Unparseable, but the file's mtime still says when the trainer last wrote.
        pytest.param(_torn, 0.0, None, 5.0, 1.0, id="torn write"),
        pytest.param(_binary, 0.0, None, 5.0, 1.0, id="not text"),
        pytest.param(
            lambda d: write_progress(d, time=NOW - 3600), 0.0, None, 3600.0, 0.0, id="stale: hung"
        ),
        pytest.param(write_progress, 1.0, 120.0, 2.0, 0.0, id="fresh"),
    ],
)
def test_training_report_states(
    run_dir: Path,
    prepare: object,
    up: float,
    step: float | None,
    age: float | None,
    progress_errors: float,
) -> None:
    prepare(run_dir)  # type: ignore[operator]
    expo = scrape(make_collector(run_dir, FakeNVML([])))
    assert expo.value(n.TRAINING_UP) == up
    assert expo.value(n.TRAINING_STEP) == step
    assert expo.value(n.TRAINING_REPORT_AGE) == age
    assert expo.value(n.EXPORTER_READ_ERRORS, source=n.SOURCE_PROGRESS) == progress_errors
    if not up:
        # Values of a silent trainer are withheld, not frozen on the dashboard.
        assert not expo.series(n.TRAINING_LOSS)
        assert not expo.series(n.TRAINING_RESTARTS)


def test_training_values_in_base_units(run_dir: Path) -> None:
    write_progress(run_dir)
    expo = scrape(make_collector(run_dir, FakeNVML([])))
    assert expo.value(n.TRAINING_STEP_TARGET) == 1000
    assert expo.value(n.TRAINING_PROGRESS) == pytest.approx(0.12)
    assert expo.value(n.TRAINING_SAMPLES) == 3840
    assert expo.value(n.TRAINING_SAMPLES_PER_SECOND) == 80
    assert expo.value(n.TRAINING_LOSS) == 2.5
    assert expo.value(n.TRAINING_STEP_DURATION) == 0.4
    assert expo.value(n.TRAINING_WORLD_SIZE) == 4
    assert expo.value(n.TRAINING_RESTARTS) == 1
    assert expo.value(n.TRAINING_CHECKPOINT_STEP) == 100
    assert expo.value(n.TRAINING_CHECKPOINT_AGE) == 90
    assert expo.value(n.TRAINING_CHECKPOINT_TIMESTAMP) == NOW - 90


def test_nan_loss_reaches_prometheus_as_nan(run_dir: Path) -> None:
    (run_dir / contract.PROGRESS_FILE).write_text(f'{{"step": 5, "loss": NaN, "time": {NOW}}}')
    expo = scrape(make_collector(run_dir, FakeNVML([])))
    loss = expo.value(n.TRAINING_LOSS)
    assert loss is not None
    assert math.isnan(loss)


def test_trainer_stopping_removes_its_series(run_dir: Path) -> None:
    write_progress(run_dir)
    collector = make_collector(run_dir, FakeNVML([]))
    assert scrape(collector).value(n.TRAINING_STEP) == 120
    (run_dir / contract.PROGRESS_FILE).unlink()
    after = scrape(collector)
    assert after.value(n.TRAINING_UP) == 0
    assert after.value(n.TRAINING_STEP) is None


# --- GPU visibility ----------------------------------------------------------
# `assigned` tells a GPU-less pod (gpu_up 0, no fault) from a blind or broken sidecar.
@pytest.mark.parametrize(
    ("listed", "all_gpus", "exported", "up", "assigned"),
    [
        pytest.param(None, False, set(), 0.0, None, id="no gpus.json: none of the node's 4"),
        pytest.param([uuid(1), uuid(3)], False, {uuid(1), uuid(3)}, 1.0, 2, id="the pod's 2 of 4"),
        pytest.param([uuid(1), "GPU-gone"], False, {uuid(1)}, 0.0, 2, id="one listed GPU missing"),
        pytest.param([], False, set(), 0.0, 0, id="CPU-only trainer"),
        pytest.param(None, True, {uuid(i) for i in range(4)}, 1.0, None, id="--all-gpus"),
    ],
)
def test_exports_only_the_pods_gpus(
    run_dir: Path,
    listed: list[str] | None,
    all_gpus: bool,
    exported: set[str],
    up: float,
    assigned: int | None,
) -> None:
    if listed is not None:
        write_gpus_file(run_dir, listed)
    expo = scrape(make_collector(run_dir, FakeNVML(gpus(4)), all_gpus=all_gpus))
    assert exported_uuids(expo) == exported
    assert expo.value(n.GPU_UP) == up
    assert expo.value(n.GPU_DEVICES) == len(exported)
    assert expo.value(n.GPU_ASSIGNED_DEVICES) == assigned
    for name in GPU_SERIES:
        assert {s.labels[n.L_GPU_UUID] for s in expo.series(name)} == exported


def test_malformed_gpus_file_exports_no_gpu_and_counts_an_error(run_dir: Path) -> None:
    (run_dir / contract.GPUS_FILE).write_text('{"uuids": [0, 1]}')
    expo = scrape(make_collector(run_dir, FakeNVML(gpus(2))))
    assert exported_uuids(expo) == set()
    assert expo.value(n.EXPORTER_READ_ERRORS, source=n.SOURCE_GPUS_FILE) == 1


def test_gpus_file_written_after_start_is_picked_up(run_dir: Path) -> None:
    collector = make_collector(run_dir, FakeNVML(gpus(2)))
    assert exported_uuids(scrape(collector)) == set()
    write_gpus_file(run_dir, [uuid(0)])
    assert exported_uuids(scrape(collector)) == {uuid(0)}


# --- GPU readings --------------------------------------------------------------
def test_gpu_readings_in_base_units_with_labels(run_dir: Path) -> None:
    gpu = FakeGpu(
        uuid=uuid(0),
        name="NVIDIA A100-SXM4-40GB",
        gpu_util_percent=87,
        mem_util_percent=33,
        memory_used_bytes=30 * 1024**3,
        memory_total_bytes=40 * 1024**3,
        power_mw=312_500,
        power_limit_mw=400_000,
        energy_mj=123_456_789,
        temperature_c=71,
        sm_clock_mhz=1410,
        ecc_corrected=3,
        ecc_uncorrected=1,
    )
    write_gpus_file(run_dir, [uuid(0)])
    expo = scrape(make_collector(run_dir, FakeNVML([gpu])))
    ids = {n.L_GPU: "0", n.L_GPU_UUID: uuid(0), n.L_MODEL: "NVIDIA A100-SXM4-40GB"}
    assert expo.value(n.GPU_UTILIZATION, **ids) == 0.87
    assert expo.value(n.GPU_MEMORY_UTILIZATION, **ids) == 0.33
    assert expo.value(n.GPU_MEMORY_USED, **ids) == 30 * 1024**3
    assert expo.value(n.GPU_MEMORY_TOTAL, **ids) == 40 * 1024**3
    assert expo.value(n.GPU_POWER, **ids) == 312.5
    assert expo.value(n.GPU_POWER_LIMIT, **ids) == 400.0
    assert expo.value(n.GPU_ENERGY, **ids) == pytest.approx(123_456.789)
    assert expo.value(n.GPU_TEMPERATURE, **ids) == 71
    assert expo.value(n.GPU_SM_CLOCK, **ids) == 1.41e9
    assert expo.value(n.GPU_ECC_ERRORS, **ids, error_type="corrected") == 3
    assert expo.value(n.GPU_ECC_ERRORS, **ids, error_type="uncorrected") == 1
    assert expo.value(n.GPU_DRIVER_INFO, driver_version="550.54.15") == 1


@pytest.mark.parametrize(
    ("node", "label"),
    [
        pytest.param(NODE, NODE, id="from the downward API"),
        # Outside a pod (the local runner, a test): no label at all, not node="".
        pytest.param(None, None, id="not told"),
        pytest.param("", None, id="empty"),
    ],
)
def test_gpu_series_carry_their_node_and_only_they_do(
    run_dir: Path, node: str | None, label: str | None
) -> None:
    write_progress(run_dir)
    write_gpus_file(run_dir, [uuid(0), uuid(1)])
    expo = scrape(make_collector(run_dir, FakeNVML(gpus(2)), node=node))
    per_gpu = [s for s in expo.samples if n.L_GPU_UUID in s.labels]
    assert {s.labels.get(n.L_NODE) for s in per_gpu} == {label}
    assert not any(n.L_NODE in s.labels for s in expo.samples if n.L_GPU_UUID not in s.labels)
    assert 'node=""' not in expo.text


def test_memory_and_pcie_health_in_base_units(run_dir: Path) -> None:
    gpu = FakeGpu(
        uuid=uuid(0),
        mem_clock_mhz=1593,
        memory_temperature_c=52,
        remapped_rows_corrected=2,
        remapped_rows_uncorrected=1,
        row_remap_pending=True,
        pcie_replays=7,
    )
    write_gpus_file(run_dir, [uuid(0)])
    expo = scrape(make_collector(run_dir, FakeNVML([gpu])))
    assert expo.value(n.GPU_MEMORY_CLOCK) == 1.593e9
    assert expo.value(n.GPU_MEMORY_TEMPERATURE) == 52
    assert expo.value(n.GPU_REMAPPED_ROWS, error_type=n.ECC_CORRECTED) == 2
    assert expo.value(n.GPU_REMAPPED_ROWS, error_type=n.ECC_UNCORRECTED) == 1
    assert expo.value(n.GPU_ROW_REMAP_PENDING) == 1
    assert expo.value(n.GPU_ROW_REMAP_FAILED) == 0
    assert expo.value(n.GPU_PCIE_REPLAYS) == 7


def test_a_board_without_a_memory_sensor_lacks_only_that_series(
    run_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # NVML answers a field-value query as a whole and marks each field unsupported:
    # that must read as "not supported", not as a read error on every pass.
    write_gpus_file(run_dir, [uuid(0), uuid(1)])
    fake = FakeNVML([FakeGpu(uuid(0), memory_temperature_c=None), FakeGpu(uuid(1))])
    collector = make_collector(run_dir, fake)
    with caplog.at_level(logging.INFO, logger="trainop.exporter"):
        for _ in range(3):
            expo = scrape(collector)
            temps = expo.series(n.GPU_MEMORY_TEMPERATURE)
            assert {s.labels[n.L_GPU_UUID] for s in temps} == {uuid(1)}
            assert expo.value(n.GPU_TEMPERATURE, gpu_uuid=uuid(0)) is not None
            assert expo.value(n.EXPORTER_READ_ERRORS, source=n.SOURCE_NVML) == 0
    assert fake.device_calls["nvmlDeviceGetFieldValues", uuid(0)] == 1
    said = [r.getMessage() for r in caplog.records if "memory_temperature" in r.getMessage()]
    assert said == ["GPU 0 does not report memory_temperature (NotSupported)"]


def test_clock_event_reasons_become_one_series_per_reason(run_dir: Path) -> None:
    write_gpus_file(run_dir, [uuid(0)])
    fake = FakeNVML(gpus(1, clock_event_reasons=0x004 | 0x040))
    expo = scrape(make_collector(run_dir, fake))
    active = {s.labels[n.L_REASON] for s in expo.series(n.GPU_CLOCK_EVENT_ACTIVE) if s.value == 1}
    assert active == {"sw_power_cap", "hw_thermal_slowdown"}
    # Only reasons the device can report get a series (0 means "known not active").
    reported = {s.labels[n.L_REASON] for s in expo.series(n.GPU_CLOCK_EVENT_ACTIVE)}
    assert reported == {r for bit, r in n.CLOCK_EVENT_REASONS if bit & 0x0EF}
    assert "display_clock_setting" not in reported


def test_unknown_supported_reasons_report_every_reason(run_dir: Path) -> None:
    write_gpus_file(run_dir, [uuid(0)])
    errors = {"nvmlDeviceGetSupportedClocksEventReasons": "NotSupported"}
    fake = FakeNVML(gpus(1, clock_event_reasons=0x004, errors=errors))
    collector = make_collector(run_dir, fake)
    for _ in range(2):
        expo = scrape(collector)
        assert len(expo.series(n.GPU_CLOCK_EVENT_ACTIVE)) == len(n.CLOCK_EVENT_REASONS)
    assert fake.calls["nvmlDeviceGetSupportedClocksEventReasons"] == 1


def test_old_driver_falls_back_to_throttle_reasons(run_dir: Path) -> None:
    write_gpus_file(run_dir, [uuid(0)])
    fake = FakeNVML(
        gpus(
            1,
            clock_event_reasons=0x004,
            errors={"nvmlDeviceGetCurrentClocksEventReasons": "FunctionNotFound"},
        )
    )
    expo = scrape(make_collector(run_dir, fake))
    assert expo.value(n.GPU_CLOCK_EVENT_ACTIVE, reason="sw_power_cap") == 1


@pytest.mark.parametrize(
    ("function", "error", "missing"),
    [
        pytest.param(
            "nvmlDeviceGetTotalEnergyConsumption", "NotSupported", n.GPU_ENERGY, id="no energy"
        ),
        pytest.param("nvmlDeviceGetTotalEccErrors", "NotSupported", n.GPU_ECC_ERRORS, id="no ECC"),
        pytest.param(
            "nvmlDeviceGetEnforcedPowerLimit", "NoPermission", n.GPU_POWER_LIMIT, id="no perm"
        ),
        pytest.param("nvmlDeviceRegisterEvents", "NotSupported", n.GPU_XID_ERRORS, id="no XID"),
        pytest.param(
            "nvmlDeviceGetRemappedRows", "NotSupported", n.GPU_REMAPPED_ROWS, id="no row remapper"
        ),
        pytest.param(
            "nvmlDeviceGetPcieReplayCounter", "NoPermission", n.GPU_PCIE_REPLAYS, id="no replays"
        ),
    ],
)
def test_unsupported_reading_drops_only_that_series_and_is_asked_once(
    run_dir: Path, function: str, error: str, missing: str
) -> None:
    write_gpus_file(run_dir, [uuid(0), uuid(1)])
    fake = FakeNVML([FakeGpu(uuid(0), errors={function: error}), FakeGpu(uuid(1))])
    collector = make_collector(run_dir, fake)
    for _ in range(3):
        expo = scrape(collector)
        assert {s.labels[n.L_GPU_UUID] for s in expo.series(missing)} == {uuid(1)}
        assert exported_uuids(expo) == {uuid(0), uuid(1)}
        assert expo.value(n.GPU_UP) == 1
        assert expo.value(n.EXPORTER_READ_ERRORS, source=n.SOURCE_NVML) == 0
    # Unsupported stays unsupported: not asked again on every scrape.
    assert fake.device_calls[function, uuid(0)] == 1


def test_transient_error_is_counted_and_gpu_stays(run_dir: Path) -> None:
    write_gpus_file(run_dir, [uuid(0)])
    fake = FakeNVML([FakeGpu(uuid(0), errors={"nvmlDeviceGetPowerUsage": "Timeout"})])
    collector = make_collector(run_dir, fake)
    expo = scrape(collector)
    assert expo.value(n.GPU_POWER) is None
    assert expo.value(n.GPU_ENERGY) is not None
    assert expo.value(n.EXPORTER_READ_ERRORS, source=n.SOURCE_NVML) == 1
    del fake.gpu(uuid(0)).errors["nvmlDeviceGetPowerUsage"]
    # A transient failure is retried: the series comes back.
    assert scrape(collector).value(n.GPU_POWER) == 70.0


def clocked_collector(run_dir: Path, fake: FakeNVML, now: list[float]) -> TrainopCollector:
    """A collector whose GPU reader's monotonic clock is now[0], rescanning every 120 s."""
    return TrainopCollector(
        run_dir=run_dir,
        gpu_reader=GpuReader(lambda: Nvml(fake), monotonic=lambda: now[0], rescan_seconds=120),
        rapl_reader=RaplReader(None),
        identity=IDENTITY,
    )


@pytest.mark.parametrize(
    ("error", "inits", "up", "exported", "errors"),
    [
        # NVML's catch-all for one failed query: that series is dropped, NVML is left alone.
        pytest.param("Unknown", 1, 1.0, True, 7, id="Unknown: transient"),
        pytest.param("Timeout", 1, 1.0, True, 7, id="Timeout: transient"),
        # Lost but still enumerated: re-init right away, then once per 120 s, not per scrape.
        pytest.param("GpuIsLost", 3, 0.0, False, 0, id="GpuIsLost: rate-limited re-init"),
        pytest.param("ResetRequired", 3, 0.0, False, 0, id="ResetRequired: rate-limited"),
    ],
)
def test_a_failing_reading_never_reinitialises_nvml_on_every_scrape(
    run_dir: Path, error: str, inits: int, up: float, exported: bool, errors: int
) -> None:
    write_gpus_file(run_dir, [uuid(0)])
    fake = FakeNVML([FakeGpu(uuid(0), errors={"nvmlDeviceGetPowerUsage": error})])
    now = [0.0]
    collector = clocked_collector(run_dir, fake, now)
    for t in (0.0, 15.0, 30.0, 60.0, 119.0, 121.0, 135.0):
        now[0] = t
        expo = scrape(collector)
        assert expo.value(n.GPU_UP) == up
        assert expo.value(n.GPU_POWER) is None
        assert (expo.value(n.GPU_ENERGY) is not None) == exported
    assert fake.calls["nvmlInit"] == inits
    assert expo.value(n.EXPORTER_READ_ERRORS, source=n.SOURCE_NVML) == errors


def test_nvml_initialised_once_and_handles_cached(run_dir: Path) -> None:
    write_gpus_file(run_dir, [uuid(0), uuid(1)])
    fake = FakeNVML(gpus(2))
    collector = make_collector(run_dir, fake)
    for _ in range(5):
        scrape(collector)
    assert fake.calls["nvmlInit"] == 1
    assert fake.calls["nvmlDeviceGetHandleByIndex"] == 2
    assert fake.calls["nvmlDeviceGetPowerUsage"] == 10


# --- profiling (NVML's GPM API) -----------------------------------------------
MIB = 1024 * 1024


# FakeGpu rate (NVML's unit) -> the metric and its value in base units.
@pytest.mark.parametrize(
    ("rate", "nvml_value", "metric", "expected"),
    [
        pytest.param("sm_active_percent", 91.5, n.GPU_SM_ACTIVE, 0.915, id="SM active"),
        pytest.param("sm_occupancy_percent", 37.5, n.GPU_SM_OCCUPANCY, 0.375, id="occupancy"),
        pytest.param("tensor_active_percent", 56.0, n.GPU_TENSOR_ACTIVE, 0.56, id="tensor"),
        pytest.param("dram_active_percent", 43.0, n.GPU_DRAM_ACTIVE, 0.43, id="DRAM"),
        pytest.param("fp16_active_percent", 3.0, n.GPU_FP16_ACTIVE, 0.03, id="FP16"),
        pytest.param("fp32_active_percent", 8.5, n.GPU_FP32_ACTIVE, 0.085, id="FP32"),
        pytest.param("fp64_active_percent", 1.0, n.GPU_FP64_ACTIVE, 0.01, id="FP64"),
        pytest.param("pcie_tx_mib_per_s", 312.0, n.GPU_PCIE_TRANSMIT, 312 * MIB, id="PCIe TX"),
        pytest.param("pcie_rx_mib_per_s", 1450.0, n.GPU_PCIE_RECEIVE, 1450 * MIB, id="PCIe RX"),
        pytest.param(
            "nvlink_tx_mib_per_s", 61_000.0, n.GPU_NVLINK_TRANSMIT, 61_000 * MIB, id="NVLink TX"
        ),
        pytest.param(
            "nvlink_rx_mib_per_s", 60_750.0, n.GPU_NVLINK_RECEIVE, 60_750 * MIB, id="NVLink RX"
        ),
    ],
)
def test_profiling_metrics_need_two_samples_and_come_in_base_units(
    run_dir: Path, rate: str, nvml_value: float, metric: str, expected: float
) -> None:
    write_gpus_file(run_dir, [uuid(0)])
    collector = make_collector(run_dir, FakeNVML([FakeGpu(uuid(0), **{rate: nvml_value})]))
    first = scrape(collector)
    # GPM rates are differences between two samples: the first pass has one.
    assert first.value(n.GPU_PROFILING_SUPPORTED) == 1
    assert first.value(metric) is None
    second = scrape(collector)
    assert second.value(metric) == pytest.approx(expected)
    assert second.value(n.EXPORTER_READ_ERRORS, source=n.SOURCE_NVML) == 0


def test_profiling_rates_are_those_of_the_interval_since_the_last_pass(run_dir: Path) -> None:
    write_gpus_file(run_dir, [uuid(0)])
    fake = FakeNVML([FakeGpu(uuid(0), tensor_active_percent=10.0)])
    collector = make_collector(run_dir, fake)
    scrape(collector)
    assert scrape(collector).value(n.GPU_TENSOR_ACTIVE) == pytest.approx(0.10)
    fake.gpu(uuid(0)).tensor_active_percent = 80.0
    assert scrape(collector).value(n.GPU_TENSOR_ACTIVE) == pytest.approx(0.80)
    # One sample per pass, reused as the next pass's "before": never one alloc per pass.
    assert fake.calls["nvmlGpmSampleAlloc"] == 2
    assert fake.calls["nvmlGpmSampleGet"] == 3


PROFILING_SERIES = {metric for metric, _, _ in GPM_METRICS}


@pytest.mark.parametrize(
    ("overrides", "said"),
    [
        pytest.param(
            {"name": "NVIDIA A100-SXM4-80GB", "gpm_supported": False},
            "GPU 0 (NVIDIA A100-SXM4-80GB) has no GPM profiling",
            id="before Hopper",
        ),
        pytest.param(
            {"errors": {"nvmlGpmQueryDeviceSupport": "FunctionNotFound"}},
            "GPU 0 does not report profiling (FunctionNotFound)",
            id="driver without GPM",
        ),
        pytest.param(
            {"errors": {"nvmlGpmSampleGet": "NoPermission"}},
            "GPU 0 does not report profiling (NoPermission)",
            id="GPM refused",
        ),
    ],
)
def test_a_gpu_without_profiling_says_so_once_and_lacks_only_those_series(
    run_dir: Path, caplog: pytest.LogCaptureFixture, overrides: dict[str, Any], said: str
) -> None:
    write_gpus_file(run_dir, [uuid(0), uuid(1)])
    fake = FakeNVML([FakeGpu(uuid(0), **overrides), FakeGpu(uuid(1))])
    collector = make_collector(run_dir, fake)
    with caplog.at_level(logging.INFO, logger="trainop.exporter"):
        for _ in range(3):
            expo = scrape(collector)
            assert expo.value(n.GPU_PROFILING_SUPPORTED, gpu_uuid=uuid(0)) == 0
            assert expo.value(n.GPU_PROFILING_SUPPORTED, gpu_uuid=uuid(1)) == 1
            assert not any(expo.series(m, gpu_uuid=uuid(0)) for m in PROFILING_SERIES)
            assert expo.value(n.GPU_POWER, gpu_uuid=uuid(0)) is not None
            assert expo.value(n.GPU_UP) == 1
            assert expo.value(n.EXPORTER_READ_ERRORS, source=n.SOURCE_NVML) == 0
        # The other GPU's profiling is unaffected.
        assert {s.name for s in expo.samples if s.labels.get("gpu") == "1"} >= PROFILING_SERIES
    messages = [r.getMessage() for r in caplog.records if "profiling" in r.getMessage()]
    assert [m for m in messages if m.startswith("GPU 0")] == [m for m in messages if said in m]
    assert len([m for m in messages if said in m]) == 1
    assert fake.device_calls["nvmlGpmSampleGet", uuid(0)] <= 1


def test_a_metric_the_board_lacks_is_absent_alone(
    run_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # NVLink figures on a PCIe board: NVML fails those metrics alone, inside a good call.
    write_gpus_file(run_dir, [uuid(0)])
    gpu = FakeGpu(uuid(0), nvlink_tx_mib_per_s=None, nvlink_rx_mib_per_s=None)
    collector = make_collector(run_dir, FakeNVML([gpu]))
    with caplog.at_level(logging.INFO, logger="trainop.exporter"):
        for _ in range(3):
            expo = scrape(collector)
    assert expo.value(n.GPU_NVLINK_TRANSMIT) is None
    assert expo.value(n.GPU_NVLINK_RECEIVE) is None
    assert expo.value(n.GPU_TENSOR_ACTIVE) is not None
    assert expo.value(n.GPU_PROFILING_SUPPORTED) == 1
    assert expo.value(n.EXPORTER_READ_ERRORS, source=n.SOURCE_NVML) == 0
    said = [r.getMessage() for r in caplog.records if "nvlink" in r.getMessage()]
    assert said == [
        f"GPU 0 does not report {n.GPU_NVLINK_TRANSMIT} (NotSupported)",
        f"GPU 0 does not report {n.GPU_NVLINK_RECEIVE} (NotSupported)",
    ]


def test_a_transient_profiling_failure_is_counted_and_recovers(run_dir: Path) -> None:
    write_gpus_file(run_dir, [uuid(0)])
    fake = FakeNVML([FakeGpu(uuid(0), errors={"nvmlGpmMetricsGet": "Unknown"})])
    collector = make_collector(run_dir, fake)
    scrape(collector)
    failed = scrape(collector)
    assert failed.value(n.GPU_TENSOR_ACTIVE) is None
    assert failed.value(n.GPU_PROFILING_SUPPORTED) == 1
    assert failed.value(n.EXPORTER_READ_ERRORS, source=n.SOURCE_NVML) == 1
    del fake.gpu(uuid(0)).errors["nvmlGpmMetricsGet"]
    assert scrape(collector).value(n.GPU_TENSOR_ACTIVE) == 0


def test_profiling_samples_are_freed_before_nvml_shuts_down(run_dir: Path) -> None:
    write_gpus_file(run_dir, [uuid(0), uuid(1)])
    fake = FakeNVML(gpus(2))
    collector = make_collector(run_dir, fake)
    scrape(collector)
    scrape(collector)
    collector.close()
    assert fake.calls["nvmlGpmSampleFree"] == 4
    assert fake.calls["nvmlShutdown"] == 1


# --- failures: no GPU, lost GPU, XID ------------------------------------------
@pytest.mark.parametrize("init_error", ["LibraryNotFound", "DriverNotLoaded"])
def test_no_gpu_keeps_training_metrics_and_says_so_once(
    run_dir: Path, init_error: str, caplog: pytest.LogCaptureFixture
) -> None:
    write_progress(run_dir)
    write_gpus_file(run_dir, [uuid(0)])
    fake = FakeNVML([], init_error=init_error)
    collector = make_collector(run_dir, fake)
    with caplog.at_level(logging.INFO, logger="trainop.exporter"):
        for _ in range(4):
            expo = scrape(collector)
            assert expo.value(n.GPU_UP) == 0
            assert expo.value(n.GPU_DEVICES) == 0
            assert expo.value(n.TRAINING_UP) == 1
            assert expo.value(n.TRAINING_STEP) == 120
    said = [r.getMessage() for r in caplog.records if "No usable NVIDIA GPU" in r.getMessage()]
    assert len(said) == 1
    assert init_error in said[0]
    # The trainer has a GPU, so the likely cause is named, once.
    hints = [r for r in caplog.records if "NVIDIA_VISIBLE_DEVICES=all" in r.getMessage()]
    assert len(hints) == 1
    assert fake.calls["nvmlInit"] == 4  # retried (retry_seconds=0 here) without crashing


def test_retry_of_a_failed_init_is_rate_limited(run_dir: Path) -> None:
    fake = FakeNVML([], init_error="LibraryNotFound")
    now = [0.0]
    collector = TrainopCollector(
        run_dir=run_dir,
        gpu_reader=GpuReader(lambda: Nvml(fake), monotonic=lambda: now[0], retry_seconds=30),
        rapl_reader=RaplReader(None),
        identity=IDENTITY,
    )
    for t in (0.0, 1.0, 15.0, 29.0, 31.0):
        now[0] = t
        scrape(collector)
    assert fake.calls["nvmlInit"] == 2


def test_missing_gpu_rescans_are_rate_limited(run_dir: Path) -> None:
    write_gpus_file(run_dir, [uuid(0), uuid(9)])  # uuid(9) is not on this node
    fake = FakeNVML(gpus(1))
    now = [0.0]
    collector = clocked_collector(run_dir, fake, now)
    for t in (0.0, 15.0, 30.0, 60.0, 119.0, 121.0, 135.0):
        now[0] = t
        expo = scrape(collector)
        assert expo.value(n.GPU_UP) == 0
        assert exported_uuids(expo) == {uuid(0)}  # the GPU that is there is still exported
    # First start, one rescan right after the first miss, one 120 s later.
    assert fake.calls["nvmlInit"] == 3


def test_lost_gpu_series_vanish_and_nvml_is_reinitialised(run_dir: Path) -> None:
    write_gpus_file(run_dir, [uuid(0), uuid(1)])
    fake = FakeNVML(gpus(2))
    collector = make_collector(run_dir, fake)
    assert exported_uuids(scrape(collector)) == {uuid(0), uuid(1)}

    fake.lose(uuid(1))
    lost = scrape(collector)
    assert exported_uuids(lost) == {uuid(0)}
    assert lost.value(n.GPU_UP) == 0
    for name in GPU_SERIES:
        assert not lost.series(name, gpu_uuid=uuid(1)), f"stale {name} for the lost GPU"

    still_lost = scrape(collector)  # re-init: the lost GPU is no longer enumerated
    assert fake.calls["nvmlInit"] == 2
    assert fake.calls["nvmlShutdown"] == 1
    assert exported_uuids(still_lost) == {uuid(0)}
    assert still_lost.value(n.GPU_UP) == 0

    fake.recover(uuid(1))  # e.g. after a GPU reset: back only in a fresh enumeration
    scrape(collector)
    back = scrape(collector)
    assert exported_uuids(back) == {uuid(0), uuid(1)}
    assert back.value(n.GPU_UP) == 1


def test_xid_errors_counted_and_survive_reinit(run_dir: Path) -> None:
    write_gpus_file(run_dir, [uuid(0), uuid(1)])
    fake = FakeNVML(gpus(2))
    collector = make_collector(run_dir, fake)
    first = scrape(collector)
    assert first.value(n.GPU_XID_ERRORS, gpu_uuid=uuid(0)) == 0
    assert first.value(n.GPU_LAST_XID, gpu_uuid=uuid(0)) == 0

    fake.inject_xid(uuid(0), 79)
    fake.inject_xid(uuid(0), 48)
    second = scrape(collector)
    assert second.value(n.GPU_XID_ERRORS, gpu_uuid=uuid(0)) == 2
    assert second.value(n.GPU_LAST_XID, gpu_uuid=uuid(0)) == 48
    assert second.value(n.GPU_XID_ERRORS, gpu_uuid=uuid(1)) == 0

    fake.lose(uuid(1))
    scrape(collector)
    fake.recover(uuid(1))
    scrape(collector)  # re-init happens here
    fake.inject_xid(uuid(0), 13)
    after = scrape(collector)
    assert after.value(n.GPU_XID_ERRORS, gpu_uuid=uuid(0)) == 3  # a counter never goes back


def test_a_crashing_source_costs_only_its_own_series(
    run_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_progress(run_dir)

    class BrokenReader(GpuReader):
        def read(self, wanted: object, *, all_gpus: bool) -> object:  # type: ignore[override]
            raise RuntimeError("bug")

    collector = TrainopCollector(
        run_dir=run_dir,
        gpu_reader=BrokenReader(lambda: Nvml(FakeNVML([])), monotonic=lambda: 0.0),
        rapl_reader=RaplReader(None),
        identity=IDENTITY,
        clock=lambda: NOW,
    )
    with caplog.at_level(logging.ERROR, logger="trainop.exporter"):
        scrape(collector)
        expo = scrape(collector)
    assert expo.value(n.GPU_UP) == 0
    assert expo.value(n.TRAINING_STEP) == 120
    assert expo.value(n.EXPORTER_READ_ERRORS, source=n.SOURCE_NVML) == 2
    # The traceback is in the log, once, for whoever fixes the bug.
    assert [r.exc_info is not None for r in caplog.records] == [True]


def _crash(*args: object) -> object:
    raise RuntimeError("a bug, not an NVML or OS error")


@pytest.mark.parametrize(
    ("source", "break_it", "crash_it", "expected"),
    [
        pytest.param(
            n.SOURCE_NVML,
            lambda fake, root: fake.gpu(uuid(0)).errors.update(nvmlDeviceGetPowerUsage="Timeout"),
            # The power read times out (counted), then the temperature read crashes.
            lambda fake, patch: patch.setattr(fake, "nvmlDeviceGetTemperature", _crash),
            [1, 2, 4, 5],
            id="nvml",
        ),
        pytest.param(
            n.SOURCE_RAPL,
            lambda fake, root: (root / "intel-rapl:0" / "energy_uj").write_text("garbage\n"),
            lambda fake, patch: patch.setattr(RaplReader, "read", _crash),
            [1, 2, 3, 4],
            id="rapl",
        ),
    ],
)
def test_read_errors_never_go_down_when_a_read_crashes(
    run_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    source: str,
    break_it: Callable[[FakeNVML, Path], object],
    crash_it: Callable[[FakeNVML, pytest.MonkeyPatch], object],
    expected: list[int],
) -> None:
    # A counter that goes down reads as a reset to rate() and increase(): the issue
    # saw trainop_exporter_read_errors_total{source="nvml"} go 2 -> 1 -> 3.
    write_gpus_file(run_dir, [uuid(0)])
    root = fake_powercap(tmp_path / "powercap", {"intel-rapl:0": ("package-0", 1, 10)})
    fake = FakeNVML(gpus(1))
    collector = make_collector(run_dir, fake, powercap=root)
    break_it(fake, root)
    seen = [scrape(collector).value(n.EXPORTER_READ_ERRORS, source=source) for _ in range(2)]
    with monkeypatch.context() as patch:
        crash_it(fake, patch)
        seen.append(scrape(collector).value(n.EXPORTER_READ_ERRORS, source=source))
    seen.append(scrape(collector).value(n.EXPORTER_READ_ERRORS, source=source))
    assert seen == expected


# --- RAPL ------------------------------------------------------------------------
def test_rapl_energy_survives_counter_wraparound(run_dir: Path, tmp_path: Path) -> None:
    root = fake_powercap(
        tmp_path / "powercap",
        {
            "intel-rapl:0": ("package-0", 900_000_000, 1_000_000_000),
            "intel-rapl:0:0": ("core", 5, 10),
        },
    )
    collector = make_collector(run_dir, FakeNVML([]), powercap=root)
    first = scrape(collector)
    assert first.value(n.CPU_ENERGY_UP) == 1
    assert first.value(n.CPU_ENERGY, zone="intel-rapl:0", zone_name="package-0") == 900.0
    # The package counter wraps at 1000 J: 900 J -> (wrap) -> 50 J means 150 J were used.
    (root / "intel-rapl:0" / "energy_uj").write_text("50000000\n")
    second = scrape(collector)
    assert second.value(n.CPU_ENERGY, zone="intel-rapl:0", zone_name="package-0") == 1050.0
    (root / "intel-rapl:0" / "energy_uj").write_text("70000000\n")
    third = scrape(collector)
    assert third.value(n.CPU_ENERGY, zone="intel-rapl:0", zone_name="package-0") == 1070.0


# zone -> (name, energy in J); what the kernel lists under /sys/class/powercap.
XEON_2_SOCKETS = {
    "intel-rapl:0": ("package-0", 100),
    "intel-rapl:0:0": ("dram", 10),
    "intel-rapl:1": ("package-1", 200),
    "intel-rapl:1:0": ("dram", 20),
}
INTEL_CLIENT = {
    "intel-rapl:0": ("package-0", 100),
    "intel-rapl:0:0": ("core", 60),
    "intel-rapl:0:1": ("uncore", 5),
    "intel-rapl:0:2": ("dram", 10),
    "intel-rapl:1": ("psys", 150),
}
AMD_ZEN = {"intel-rapl:0": ("package-0", 100), "intel-rapl:0:0": ("core", 70)}


@pytest.mark.parametrize(
    ("tree", "exported", "total"),
    [
        pytest.param(XEON_2_SOCKETS, set(XEON_2_SOCKETS), 330, id="Xeon: packages + their DRAM"),
        pytest.param(
            INTEL_CLIENT, {"intel-rapl:0", "intel-rapl:0:2"}, 110, id="client: no core/uncore/psys"
        ),
        pytest.param(AMD_ZEN, {"intel-rapl:0"}, 100, id="AMD: package, not its cores"),
    ],
)
def test_rapl_exports_only_zones_that_sum_without_double_counting(
    run_dir: Path, tmp_path: Path, tree: dict[str, tuple[str, int]], exported: set[str], total: int
) -> None:
    zones = {zone: (name, joules * 1_000_000, 10**12) for zone, (name, joules) in tree.items()}
    root = fake_powercap(tmp_path / "powercap", zones)
    expo = scrape(make_collector(run_dir, FakeNVML([]), powercap=root))
    series = expo.series(n.CPU_ENERGY)
    assert {s.labels[n.L_ZONE] for s in series} == exported
    assert {s.labels[n.L_ZONE_NAME] for s in series} == {tree[z][0] for z in exported}
    # What `sum(trainop_cpu_energy_joules_total)` shows a user: the node's CPU + DRAM energy.
    assert sum(s.value for s in series) == total


@pytest.mark.parametrize(
    "powercap",
    [
        pytest.param(None, id="disabled"),
        pytest.param(Path("/nonexistent/powercap"), id="no RAPL (VM, ARM, AMD without driver)"),
    ],
)
def test_rapl_absent_is_not_an_error(run_dir: Path, powercap: Path | None) -> None:
    expo = scrape(make_collector(run_dir, FakeNVML([]), powercap=powercap))
    assert expo.value(n.CPU_ENERGY_UP) == 0
    assert not expo.series(n.CPU_ENERGY)
    assert expo.value(n.EXPORTER_READ_ERRORS, source=n.SOURCE_RAPL) == 0


def test_rapl_root_only_counters_say_so(
    run_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    root = fake_powercap(tmp_path / "powercap", {"intel-rapl:0": ("package-0", 1, 10)})
    real_read_text = Path.read_text

    def read_text(self: Path, *args: object, **kwargs: object) -> str:
        if self.name == "energy_uj":
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_text(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "read_text", read_text)
    collector = make_collector(run_dir, FakeNVML([]), powercap=root)
    with caplog.at_level(logging.INFO, logger="trainop.exporter"):
        for _ in range(3):
            expo = scrape(collector)
            assert expo.value(n.CPU_ENERGY_UP) == 0
            assert expo.value(n.EXPORTER_READ_ERRORS, source=n.SOURCE_RAPL) == 0  # not a fault
    said = [r.getMessage() for r in caplog.records if "RAPL" in r.getMessage()]
    assert len(said) == 1, said  # once, not per scrape
    # What happened, to which file, and both ways out.
    assert f"{root / 'intel-rapl:0' / 'energy_uj'} is not readable" in said[0]
    assert "root only" in said[0]
    assert "make energy_uj readable on the node" in said[0]
    assert "TRAINOP_EXPORTER_POWERCAP_ROOT=" in said[0]


# --- conventions: what any Prometheus user relies on ------------------------------
def test_every_series_follows_the_naming_and_label_rules(run_dir: Path, tmp_path: Path) -> None:
    write_progress(run_dir)
    write_gpus_file(run_dir, [uuid(0), uuid(1)])
    root = fake_powercap(tmp_path / "powercap", {"intel-rapl:0": ("package-0", 1, 10)})
    fake = FakeNVML(gpus(2))
    collector = make_collector(run_dir, fake, powercap=root)
    scrape(collector)
    expo = scrape(collector)
    for family in expo.families:
        spec = n.SPEC_BY_NAME.get(family.name) or n.SPEC_BY_NAME[family.name + "_total"]
        assert family.type == spec.kind
        for sample in family.samples:
            assert sample.name.startswith("trainop_")
            assert sample.name in n.ALL_METRIC_NAMES
            assert sample.name.endswith("_total") == (spec.kind == "counter")
            assert not n.RESERVED_TARGET_LABELS & set(sample.labels), sample
            assert {k: sample.labels[k] for k in IDENTITY} == IDENTITY
            assert set(sample.labels) == {*IDENTITY, *spec.labels}
    # Every family the spec declares shows up in a fully-fed scrape.
    assert {s.name for s in n.SPECS} == expo.names()

"""SteeredFakeNVML: a test steers the fake GPUs of a sidecar process it started
through a JSON file (`--fake-nvml-control`), as tests/chart/test_alerts_live.py does."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pynvml
import pytest

from trainop.exporter.app import parse_config
from trainop.exporter.fake_nvml import FakeNVML, SteeredFakeNVML, demo_gpus, nvml_error


def _util(fake: FakeNVML) -> Any:
    return fake.nvmlDeviceGetUtilizationRates(fake.nvmlDeviceGetHandleByIndex(0)).gpu


def _reasons(fake: FakeNVML) -> Any:
    handle = fake.nvmlDeviceGetHandleByIndex(0)
    return fake.nvmlDeviceGetCurrentClocksEventReasons(handle)


def _ecc(fake: FakeNVML) -> Any:
    handle = fake.nvmlDeviceGetHandleByIndex(0)
    return fake.nvmlDeviceGetTotalEccErrors(
        handle, pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, pynvml.NVML_VOLATILE_ECC
    )


def _power(fake: FakeNVML) -> Any:
    try:
        return fake.nvmlDeviceGetPowerUsage(fake.nvmlDeviceGetHandleByIndex(0))
    except pynvml.NVMLError as err:
        return type(err).__name__


@pytest.mark.parametrize(
    ("control", "read", "expected"),
    [
        (None, _util, 90),
        ({"gpu_util_percent": 0}, _util, 0),
        ({"clock_event_reasons": 0x008}, _reasons, 0x008),
        ({"ecc_uncorrected": 2}, _ecc, 2),
        ({"lost": True}, _power, type(nvml_error("GpuIsLost")).__name__),
    ],
    ids=["no-file", "idle", "hw-slowdown", "ecc", "lost"],
)
def test_a_control_file_sets_every_gpu(
    tmp_path: Path, control: dict[str, Any] | None, read: Callable[[FakeNVML], Any], expected: Any
) -> None:
    path = tmp_path / "control.json"
    fake = SteeredFakeNVML(demo_gpus(1), path)
    fake.nvmlInit()
    if control is not None:
        path.write_text(json.dumps(control))
    assert read(fake) == expected


def test_each_new_xid_is_injected_once(tmp_path: Path) -> None:
    path = tmp_path / "control.json"
    fake = SteeredFakeNVML(demo_gpus(1), path)
    fake.nvmlInit()
    events = fake.nvmlEventSetCreate()
    fake.nvmlDeviceRegisterEvents(
        fake.nvmlDeviceGetHandleByIndex(0), pynvml.nvmlEventTypeXidCriticalError, events
    )
    path.write_text(json.dumps({"xids": [79]}))
    assert fake.nvmlEventSetWait(events, 0).eventData == 79
    # Rewritten with one more code: only the new one arrives.
    path.write_text(json.dumps({"xids": [79, 48], "gpu_util_percent": 1}))
    assert fake.nvmlEventSetWait(events, 0).eventData == 48
    with pytest.raises(pynvml.NVMLError):
        fake.nvmlEventSetWait(events, 0)


def test_identity_is_not_steerable(tmp_path: Path) -> None:
    path = tmp_path / "control.json"
    path.write_text(json.dumps({"uuid": "GPU-other"}))
    fake = SteeredFakeNVML(demo_gpus(1), path)
    fake.nvmlInit()
    with pytest.raises(ValueError, match="not steerable"):
        fake.nvmlDeviceGetCount()


def test_the_flag_needs_the_fake(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        parse_config(["--fake-nvml-control", str(tmp_path / "c.json")], {})
    config = parse_config(
        ["--fake-nvml-gpus", "1", "--fake-nvml-control", str(tmp_path / "c.json")], {}
    )
    assert config.fake_nvml_control == tmp_path / "c.json"

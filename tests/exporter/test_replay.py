"""Replay recorded expositions (tests/exporter/fixtures/*.prom) through the checks.

Each fixture says on its first line what produced it:

- ``fake_nvml_exposition.prom``, by FakeNVML (no GPU involved). It doubles as a
  golden file: renaming a metric or a label changes it, and dashboards with
  it, and it must hold every family in ``names.SPECS``. Regenerate after an
  intended change with:

      TRAINOP_UPDATE_GOLDEN=1 .venv/bin/pytest tests/exporter/test_replay.py

- ``<model>_under_load.prom``, a REAL GPU recording written by
  ``bench/exporter/gpu_check.py`` (first line ``# REAL GPU recording: ...``).
  It is replayed as recorded: its names must be known, its values plausible
  and promtool must accept it, but it holds only what that device and node
  could report (no ECC on some boards, no RAPL without root...).
"""

from __future__ import annotations

import math
import os
import subprocess
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.exporter.helpers import (
    Exposition,
    fake_powercap,
    load_gpu_check,
    make_collector,
    required_tool,
    scrape,
    write_gpus_file,
    write_progress,
)
from trainop.exporter import names as n
from trainop.exporter.fake_nvml import FakeGpu, FakeNVML

FIXTURES = Path(__file__).parent / "fixtures"
FAKE_FIXTURE = FIXTURES / "fake_nvml_exposition.prom"
HEADER = (
    "# Produced by FakeNVML, not a real GPU: simulated readings for a golden test.\n"
    "# Regenerate: TRAINOP_UPDATE_GOLDEN=1 .venv/bin/pytest tests/exporter/test_replay.py\n"
)


def fake_scenario_exposition(tmp_path: Path) -> str:
    """A pod with 2 of a node's 3 GPUs, under load, one power-capped, after an XID."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_progress(run_dir)
    node = [
        FakeGpu(
            uuid=f"GPU-5e1ec7ed-0000-4000-8000-00000000000{i}",
            gpu_util_percent=97,
            mem_util_percent=45,
            memory_used_bytes=71_000_000_000,
            power_mw=612_000 + i * 1000,
            energy_mj=4_200_000_000 + i,
            temperature_c=64 + i,
            sm_clock_mhz=1755,
            clock_event_reasons=0x004 if i == 0 else 0x000,
            ecc_corrected=2 if i == 0 else 0,
            memory_temperature_c=70 + i,
            remapped_rows_corrected=1 if i == 0 else 0,
            pcie_replays=3 if i == 0 else 0,
            sm_active_percent=91.5,
            sm_occupancy_percent=37.25,
            tensor_active_percent=56.0 + i,
            dram_active_percent=43.5,
            fp16_active_percent=3.0,
            fp32_active_percent=8.5,
            fp64_active_percent=0.0,
            pcie_tx_mib_per_s=312.0,
            pcie_rx_mib_per_s=1450.0,
            nvlink_tx_mib_per_s=61_000.0,
            nvlink_rx_mib_per_s=60_750.0,
        )
        for i in range(3)
    ]
    write_gpus_file(run_dir, [node[0].uuid, node[2].uuid])
    powercap = fake_powercap(
        tmp_path / "powercap",
        {
            "intel-rapl:0": ("package-0", 123_000_000, 262_143_328_850),
            "intel-rapl:0:0": ("dram", 4_000_000, 65_712_999_613),
        },
    )
    fake = FakeNVML(node)
    collector = make_collector(run_dir, fake, powercap=powercap)
    scrape(collector)
    fake.inject_xid(node[0].uuid, 79)
    return scrape(collector).text


def test_fake_fixture_is_current(tmp_path: Path) -> None:
    produced = HEADER + fake_scenario_exposition(tmp_path)
    if os.environ.get("TRAINOP_UPDATE_GOLDEN"):
        FAKE_FIXTURE.write_text(produced)
    assert FAKE_FIXTURE.read_text() == produced, (
        "the exposition changed; if intended, regenerate (see module docstring) "
        "and update dashboards and alert rules that use the renamed series"
    )


def test_fake_fixture_has_every_declared_family() -> None:
    # The simulated scenario feeds every source, so it must cover the whole spec.
    missing = {s.name for s in n.SPECS} - Exposition(FAKE_FIXTURE.read_text()).names()
    assert not missing, sorted(missing)


FIXTURE_FILES = sorted(FIXTURES.glob("*.prom"))


@dataclass(frozen=True)
class Recorded:
    path: Path
    real: bool
    exposition: Exposition


@pytest.fixture(params=FIXTURE_FILES, ids=[p.name for p in FIXTURE_FILES])
def recorded(request: pytest.FixtureRequest) -> Recorded:
    path: Path = request.param
    text = path.read_text()
    real = text.startswith(load_gpu_check().HEADER_PREFIX)
    assert real or text.startswith(HEADER), (
        f"{path.name} does not say what produced it: record real GPUs with "
        "bench/exporter/gpu_check.py, regenerate the fake one as the module docstring says"
    )
    return Recorded(path, real, Exposition(text))


def test_recorded_names_are_all_known(recorded: Recorded) -> None:
    unknown = recorded.exposition.names() - n.ALL_METRIC_NAMES
    assert not unknown, f"not in trainop/exporter/names.py: {sorted(unknown)}"


def test_recorded_gpus_and_training_were_up(recorded: Recorded) -> None:
    # gpu_check records under load with a live progress.json, as the fake scenario does.
    assert recorded.exposition.value(n.GPU_UP) == 1
    assert recorded.exposition.value(n.TRAINING_UP) == 1
    assert recorded.exposition.value(n.TRAINING_STEP)


# name -> (low, high), each bound a number or the name of another series of the same GPU.
PLAUSIBLE: dict[str, tuple[float | str, float | str]] = {
    n.GPU_UTILIZATION: (0.0, 1.0),
    n.GPU_MEMORY_UTILIZATION: (0.0, 1.0),
    n.GPU_MEMORY_USED: (0.0, n.GPU_MEMORY_TOTAL),
    n.GPU_MEMORY_TOTAL: (2**30, 2**40),
    n.GPU_POWER: (1.0, n.GPU_POWER_LIMIT),
    n.GPU_POWER_LIMIT: (10.0, 2000.0),
    n.GPU_TEMPERATURE: (10.0, 110.0),
    n.GPU_SM_CLOCK: (1e8, 5e9),  # in Hz, not MHz
    n.GPU_MEMORY_CLOCK: (1e8, 2e10),  # GDDR7 effective rates reach 15 GHz; HBM is far lower
    n.GPU_MEMORY_TEMPERATURE: (10.0, 120.0),
    # GPM: ratios, and link rates under NVLink 5's 900 GB/s each way.
    **dict.fromkeys(
        (
            n.GPU_SM_ACTIVE,
            n.GPU_SM_OCCUPANCY,
            n.GPU_TENSOR_ACTIVE,
            n.GPU_DRAM_ACTIVE,
            n.GPU_FP16_ACTIVE,
            n.GPU_FP32_ACTIVE,
            n.GPU_FP64_ACTIVE,
            n.GPU_PROFILING_SUPPORTED,
        ),
        (0.0, 1.0),
    ),
    **dict.fromkeys(
        (n.GPU_PCIE_TRANSMIT, n.GPU_PCIE_RECEIVE, n.GPU_NVLINK_TRANSMIT, n.GPU_NVLINK_RECEIVE),
        (0.0, 1e12),
    ),
    n.GPU_ENERGY: (1e-3, math.inf),
}


def test_recorded_values_are_physically_plausible(recorded: Recorded) -> None:
    per_gpu: dict[str, dict[str, float]] = defaultdict(dict)
    for s in recorded.exposition.samples:
        if n.L_GPU_UUID in s.labels and n.L_REASON not in s.labels:
            per_gpu[s.labels[n.L_GPU_UUID]][s.name] = s.value
    assert per_gpu, "no GPU series recorded"
    for uuid, values in per_gpu.items():
        # A real device may not report everything; what it reported must make sense.
        assert n.GPU_POWER in values or not recorded.real, f"{uuid}: a real GPU without power"
        for name, (low, high) in PLAUSIBLE.items():
            if name not in values:
                continue
            lo = values.get(low, -math.inf) if isinstance(low, str) else low
            # Power may overshoot its enforced limit briefly.
            hi = 1.2 * values.get(high, math.inf) if isinstance(high, str) else high
            assert lo <= values[name] <= hi, f"{uuid} {name}={values[name]} not in [{lo}, {hi}]"
    for s in recorded.exposition.samples:
        assert not math.isinf(s.value), s
        assert not n.RESERVED_TARGET_LABELS & set(s.labels), s


def test_recorded_passes_promtool(recorded: Recorded) -> None:
    result = subprocess.run(
        [required_tool("promtool"), "check", "metrics"],
        input=recorded.exposition.text,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr

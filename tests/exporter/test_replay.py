"""Replay recorded expositions (tests/exporter/fixtures/*.prom) through the checks.

No GPU was available when this was written, so the only fixture is produced
by FakeNVML and says so in its name and its first line. It doubles as a
golden file: renaming a metric or a label changes it, and dashboards with it.
Regenerate after an intended change with:

    TRAINOP_UPDATE_GOLDEN=1 .venv/bin/pytest tests/exporter/test_replay.py

A fixture recorded on a real GPU (e.g. ``h100_under_load.prom``) dropped into
the same folder gets every check below except the golden comparison.
"""

from __future__ import annotations

import math
import os
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

from tests.exporter.helpers import (
    Exposition,
    fake_powercap,
    make_collector,
    scrape,
    tool,
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


FIXTURE_FILES = sorted(FIXTURES.glob("*.prom"))


@pytest.fixture(params=FIXTURE_FILES, ids=[p.name for p in FIXTURE_FILES])
def recorded(request: pytest.FixtureRequest) -> Exposition:
    path: Path = request.param
    return Exposition(path.read_text())


def test_recorded_names_are_all_known(recorded: Exposition) -> None:
    unknown = recorded.names() - n.ALL_METRIC_NAMES
    assert not unknown, f"not in trainop/exporter/names.py: {sorted(unknown)}"


def test_recorded_has_every_declared_family(recorded: Exposition) -> None:
    # A GPU fixture that is meant to be complete must cover the whole spec.
    missing = {s.name for s in n.SPECS} - recorded.names()
    assert not missing, sorted(missing)


def test_recorded_values_are_physically_plausible(recorded: Exposition) -> None:
    per_gpu: dict[str, dict[str, float]] = defaultdict(dict)
    for s in recorded.samples:
        if n.L_GPU_UUID in s.labels and n.L_REASON not in s.labels:
            per_gpu[s.labels[n.L_GPU_UUID]][s.name] = s.value
    assert per_gpu, "no GPU series recorded"
    for uuid, v in per_gpu.items():
        assert 0 <= v[n.GPU_UTILIZATION] <= 1, uuid
        assert 0 <= v[n.GPU_MEMORY_USED] <= v[n.GPU_MEMORY_TOTAL], uuid
        assert 0 < v[n.GPU_POWER] <= 1.2 * v[n.GPU_POWER_LIMIT], uuid
        assert 10 <= v[n.GPU_TEMPERATURE] <= 110, uuid
        assert 1e8 <= v[n.GPU_SM_CLOCK] <= 5e9, uuid  # in Hz, not MHz
        assert v[n.GPU_ENERGY] > 0, uuid
    for s in recorded.samples:
        assert not math.isinf(s.value), s
        assert not n.RESERVED_TARGET_LABELS & set(s.labels), s


PROMTOOL = tool("promtool")


@pytest.mark.skipif(
    PROMTOOL is None, reason="promtool binary not on PATH (apt-get install prometheus)"
)
def test_recorded_passes_promtool(recorded: Exposition) -> None:
    assert PROMTOOL is not None
    result = subprocess.run(
        [PROMTOOL, "check", "metrics"],
        input=recorded.text,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr

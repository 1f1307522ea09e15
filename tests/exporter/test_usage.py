"""The sidecar's usage totals (what status.usage sums): GPU-seconds held, idle GPU-seconds
and joules, from the sampler's passes. A table on the meter, then the real collector
reading a FakeNVML (a fake: no GPU here) whose energy counters run on the test's clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.exporter.helpers import IDENTITY, write_gpus_file
from trainop.api import constants as c
from trainop.exporter.collector import TrainopCollector
from trainop.exporter.fake_nvml import FakeGpu, FakeNVML
from trainop.exporter.gpu import GpuReader, GpuReading, GpuSnapshot
from trainop.exporter.nvml import Nvml
from trainop.exporter.rapl import RaplReader
from trainop.exporter.usage import UsageMeter


def gpu(
    uuid: str, util: float | None = 0.9, energy: float | None = None, power: float | None = None
) -> GpuReading:
    return GpuReading(
        index=0,
        uuid=uuid,
        model="H100",
        utilization_ratio=util,
        energy_joules=energy,
        power_watts=power,
    )


def down(uuid: str) -> GpuReading:
    return GpuReading(index=0, uuid=uuid, model="H100", up=False)


Pass = tuple[float, int | None, list[GpuReading]]  # (time, GPUs assigned, readings)

ROWS = [
    pytest.param(
        [(0, 2, [gpu("a"), gpu("b")]), (10, 2, [gpu("a"), gpu("b")])],
        {c.USAGE_GPU_SECONDS: 20.0, c.USAGE_IDLE_GPU_SECONDS: 0.0, c.USAGE_ENERGY_JOULES: 0.0},
        id="two-busy-gpus-for-10-s",
    ),
    pytest.param(
        [(0, 2, [gpu("a"), gpu("b", util=0.0)]), (10, 2, [gpu("a"), gpu("b", util=0.0)])],
        {c.USAGE_GPU_SECONDS: 20.0, c.USAGE_IDLE_GPU_SECONDS: 10.0, c.USAGE_ENERGY_JOULES: 0.0},
        id="one-idle",
    ),
    pytest.param(
        [(0, 1, [gpu("a", energy=1e6)]), (5, 1, [gpu("a", energy=1e6 + 3000)])],
        {c.USAGE_GPU_SECONDS: 5.0, c.USAGE_IDLE_GPU_SECONDS: 0.0, c.USAGE_ENERGY_JOULES: 3000.0},
        id="energy-counter-differences-only",
    ),
    pytest.param(
        [
            (0, 1, [gpu("a", energy=9e6)]),
            (5, 1, [gpu("a", energy=100.0)]),  # driver reloaded: a new baseline
            (10, 1, [gpu("a", energy=600.0)]),
        ],
        {c.USAGE_GPU_SECONDS: 10.0, c.USAGE_IDLE_GPU_SECONDS: 0.0, c.USAGE_ENERGY_JOULES: 500.0},
        id="counter-reset",
    ),
    pytest.param(
        [(0, 1, [gpu("a", power=300.0)]), (4, 1, [gpu("a", power=300.0)])],
        {c.USAGE_GPU_SECONDS: 4.0, c.USAGE_IDLE_GPU_SECONDS: 0.0, c.USAGE_ENERGY_JOULES: 1200.0},
        id="no-energy-counter-integrates-power",
    ),
    pytest.param(
        [(0, 2, [gpu("a"), down("b")]), (10, 2, [gpu("a"), down("b")])],
        {c.USAGE_GPU_SECONDS: 20.0, c.USAGE_IDLE_GPU_SECONDS: 0.0, c.USAGE_ENERGY_JOULES: 0.0},
        id="an-unreadable-gpu-is-still-held-not-idle",
    ),
    pytest.param(
        [(0, None, [gpu("a", util=0.0)]), (10, None, [gpu("a", util=0.0)])],
        {},
        id="before-gpus-json-nothing-is-charged",
    ),
    pytest.param([(0, 0, []), (10, 0, [])], {}, id="a-cpu-pod-reports-no-usage"),
]


@pytest.mark.parametrize(("passes", "want"), ROWS)
def test_usage_meter(passes: list[Pass], want: dict[str, float]) -> None:
    meter = UsageMeter()
    for at, assigned, readings in passes:
        meter.add(GpuSnapshot(up=True, gpus=tuple(readings)), assigned, at)
    assert meter.totals() == want


def test_the_collectors_passes_feed_the_meter(tmp_path: Path) -> None:
    t = [100.0]
    fake = FakeNVML(
        [
            FakeGpu(uuid="GPU-busy", gpu_util_percent=95, power_mw=500_000, energy_mj=10**9),
            FakeGpu(uuid="GPU-idle", gpu_util_percent=0, power_mw=100_000, energy_mj=10**9),
            FakeGpu(uuid="GPU-not-ours", gpu_util_percent=0, power_mw=100_000),
        ],
        clock=lambda: t[0],
    )
    write_gpus_file(tmp_path, ["GPU-busy", "GPU-idle"])
    collector = TrainopCollector(
        run_dir=tmp_path,
        gpu_reader=GpuReader(lambda: Nvml(fake), monotonic=lambda: t[0]),
        rapl_reader=RaplReader(None),
        identity=IDENTITY,
        clock=lambda: t[0],
        timer=lambda: t[0],
    )
    for _ in range(4):  # three 5 s intervals
        collector.sample_gpus()
        t[0] += 5.0
    assert collector.usage.totals() == {
        c.USAGE_GPU_SECONDS: 30.0,  # 2 GPUs x 15 s; the node's third GPU is not the pod's
        c.USAGE_IDLE_GPU_SECONDS: 15.0,
        c.USAGE_ENERGY_JOULES: 9000.0,  # (500 W + 100 W) x 15 s
    }

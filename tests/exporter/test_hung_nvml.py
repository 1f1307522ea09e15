"""An NVML call that hangs in the driver costs that GPU's readings, never a scrape.

The issue this answers: one hung call blocked every /metrics request, training
metrics included, while /healthz said 200 and request threads piled up. FakeNVML
(a fake, no GPU behind it) hangs a device's calls on demand.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.exporter.helpers import (
    IDENTITY,
    NOW,
    Exposition,
    gpus,
    http_get,
    scrape,
    uuid,
    wait_until,
    write_gpus_file,
    write_progress,
)
from trainop.exporter import names as n
from trainop.exporter.app import ExporterConfig, RunningExporter
from trainop.exporter.collector import TrainopCollector
from trainop.exporter.exposition import TextRenderer
from trainop.exporter.fake_nvml import FakeNVML
from trainop.exporter.gpu import GpuReader
from trainop.exporter.nvml import Nvml
from trainop.exporter.rapl import RaplReader

TIMEOUT = 0.2  # seconds per GPU read: short, so each case costs little
# Generous on purpose: a loaded CI machine must not flake. The real figure is measured
# by bench/exporter/bench_hung_nvml.py (bench/exporter/README.md).
SCRAPE_BOUND_S = 1.0


def collector_over(
    run_dir: Path,
    fake: FakeNVML,
    *,
    timer: Callable[[], float] = time.perf_counter,
    all_gpus: bool = False,
    stale_after: float = math.inf,
) -> TrainopCollector:
    return TrainopCollector(
        run_dir=run_dir,
        gpu_reader=GpuReader(
            lambda: Nvml(fake), monotonic=time.monotonic, read_timeout_seconds=TIMEOUT
        ),
        rapl_reader=RaplReader(None),
        identity=IDENTITY,
        clock=lambda: NOW,
        timer=timer,
        all_gpus=all_gpus,
        gpu_sample_stale_after_seconds=stale_after,
    )


def served(collector: TrainopCollector) -> Exposition:
    """What a scrape serves now, without taking a sample first."""
    return Exposition(TextRenderer().render(collector.collect()).decode())


def device_up(expo: Exposition) -> dict[str, float]:
    return {s.labels[n.L_GPU_UUID]: s.value for s in expo.series(n.GPU_DEVICE_UP)}


def calls_to(fake: FakeNVML, gpu_uuid: str) -> int:
    return sum(count for (_, u), count in fake.device_calls.items() if u == gpu_uuid)


@pytest.mark.parametrize("stuck", [0, 1, 2], ids=["first GPU", "middle GPU", "last GPU"])
def test_a_hung_gpu_is_down_alone_until_its_call_returns(tmp_path: Path, stuck: int) -> None:
    write_progress(tmp_path)
    write_gpus_file(tmp_path, [uuid(i) for i in range(3)])
    fake = FakeNVML(gpus(3))
    collector = collector_over(tmp_path, fake)
    healthy = {uuid(i) for i in range(3)} - {uuid(stuck)}
    assert scrape(collector).value(n.GPU_UP) == 1
    calls_before = calls_to(fake, uuid(stuck))
    # While running: a hang during enumeration stops the sampler itself (next test).
    fake.hang(uuid(stuck))
    try:
        for _ in range(3):
            expo = scrape(collector)
            assert device_up(expo) == dict.fromkeys(healthy, 1.0) | {uuid(stuck): 0.0}
            assert {s.labels[n.L_GPU_UUID] for s in expo.series(n.GPU_POWER)} == healthy
            assert expo.value(n.GPU_UP) == 0
            assert expo.value(n.GPU_DEVICES) == 2
            assert expo.value(n.TRAINING_STEP) == 120
            # One error for the hang, not one per pass while it lasts.
            assert expo.value(n.EXPORTER_READ_ERRORS, source=n.SOURCE_NVML) == 1
        # Not asked again while its call is stuck: one stuck call, not one per pass.
        assert calls_to(fake, uuid(stuck)) == calls_before + 1
    finally:
        fake.release(uuid(stuck))
    back = wait_until(
        lambda: (e := scrape(collector)).value(n.GPU_UP) == 1 and e, 5, "the GPU to answer again"
    )
    assert device_up(back) == {uuid(i): 1.0 for i in range(3)}
    assert fake.calls["nvmlInit"] == 1  # a hang is not a lost GPU: no re-init


def test_nvml_is_not_shut_down_under_a_stuck_call(tmp_path: Path) -> None:
    # A lost GPU asks for shutdown + init; with another GPU's call still inside NVML,
    # nvmlShutdown would wait for it and stop the sampler too.
    write_gpus_file(tmp_path, [uuid(0), uuid(1)])
    fake = FakeNVML(gpus(2))
    collector = collector_over(tmp_path, fake)
    scrape(collector)
    fake.hang(uuid(0))
    fake.lose(uuid(1))
    try:
        for _ in range(3):
            expo = scrape(collector)
            assert device_up(expo) == {uuid(0): 0.0, uuid(1): 0.0}
        assert fake.calls["nvmlShutdown"] == 0
    finally:
        fake.release(uuid(0))

    def reinitialised() -> bool:
        scrape(collector)
        return fake.calls["nvmlShutdown"] == 1

    # Once the call is back, the postponed re-init happens and finds GPU 0 alone.
    wait_until(reinitialised, 5, "the postponed re-init")
    assert device_up(scrape(collector)) == {uuid(0): 1.0}


def test_a_sample_too_old_is_withdrawn_and_its_age_says_why(tmp_path: Path) -> None:
    # The sampler itself stuck (say in nvmlInit during a re-init): no new samples come.
    write_progress(tmp_path)
    write_gpus_file(tmp_path, [uuid(0)])
    now = [100.0]
    collector = collector_over(tmp_path, FakeNVML(gpus(1)), timer=lambda: now[0], stale_after=20)
    collector.sample_gpus()
    now[0] += 15
    fresh_enough = served(collector)
    assert fresh_enough.value(n.GPU_SAMPLE_AGE) == 15
    assert fresh_enough.value(n.GPU_UP) == 1
    assert fresh_enough.value(n.GPU_POWER) == 70.0
    now[0] += 10
    stale = served(collector)
    assert stale.value(n.GPU_SAMPLE_AGE) == 25
    assert stale.value(n.GPU_UP) == 0
    assert not stale.series(n.GPU_POWER), "readings 25 s old served as current"
    # Still known: the pod was given a GPU, so TrainopGPUDown can fire.
    assert stale.value(n.GPU_ASSIGNED_DEVICES) == 1
    assert stale.value(n.TRAINING_STEP) == 120


def test_metrics_keep_answering_while_a_gpu_hangs(tmp_path: Path) -> None:
    write_progress(tmp_path, time=None)
    fake = FakeNVML(gpus(2))
    config = ExporterConfig(
        address="127.0.0.1",
        port=0,
        run_dir=tmp_path,
        all_gpus=True,
        sample_seconds=0.05,
        nvml_timeout_seconds=TIMEOUT,
    )
    collector = collector_over(tmp_path, fake, all_gpus=True)
    exporter = RunningExporter(config, collector)
    url = f"http://127.0.0.1:{exporter.port}/metrics"
    fake.hang(uuid(1))  # after the first sample enumerated the GPUs

    def timed_scrape(_: int) -> tuple[float, Exposition]:
        started = time.perf_counter()
        status, body = http_get(url, timeout=10)
        assert status == 200
        return time.perf_counter() - started, Exposition(body)

    try:
        wait_until(
            lambda: device_up(timed_scrape(0)[1]) == {uuid(0): 1.0, uuid(1): 0.0},
            5,
            "the sampler to give up on the hung GPU",
        )
        # Three Prometheus-like clients at once, as in the issue, for several rounds.
        with ThreadPoolExecutor(max_workers=3) as pool:
            results = list(pool.map(timed_scrape, range(30)))
    finally:
        fake.release(uuid(1))
        exporter.stop()
    slowest = max(seconds for seconds, _ in results)
    assert slowest < SCRAPE_BOUND_S, f"a scrape took {slowest:.3f} s while a GPU hung"
    for _, expo in results:
        assert expo.value(n.TRAINING_STEP) == 120
        assert device_up(expo) == {uuid(0): 1.0, uuid(1): 0.0}
        assert expo.value(n.GPU_POWER, gpu_uuid=uuid(0)) == 70.0

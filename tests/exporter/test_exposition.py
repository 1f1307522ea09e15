"""The cached text renderer writes exactly what prometheus_client would."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.utils import floatToGoString

from tests.exporter.helpers import (
    fake_powercap,
    gpus,
    make_collector,
    uuid,
    write_gpus_file,
    write_progress,
)
from trainop.exporter.exposition import TextRenderer, format_value
from trainop.exporter.fake_nvml import FakeNVML


def test_renderer_matches_prometheus_client_byte_for_byte(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_progress(run_dir, loss=float("nan"))
    write_gpus_file(run_dir, [uuid(0), uuid(1)])
    powercap = fake_powercap(tmp_path / "rapl", {"intel-rapl:0": ("package-0", 7, 10**9)})
    fake = FakeNVML(gpus(2, name='Model "quoted"\\back\nline'))
    registry = CollectorRegistry()
    collector = make_collector(run_dir, fake, powercap=powercap)
    collector.sample_gpus()
    registry.register(collector)
    ProcessCollector(namespace="trainop_exporter", registry=registry)
    renderer = TextRenderer()
    # Same families rendered both ways; twice, so the second pass runs from the cache.
    for _ in range(2):
        families = list(registry.collect())
        ours = renderer.render(families)
        theirs = generate_latest(_Frozen(families))
        assert ours == theirs


class _Frozen:
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families


@pytest.mark.parametrize(
    "value",
    [
        0.0,
        1.0,
        -2.5,
        0.1,
        123456.0,
        1234567.0,
        1.001528666e6,
        6.442450944e10,
        1e21,
        1e-7,
        float("nan"),
        float("inf"),
        float("-inf"),
        17.0 / 3,
    ],
)
def test_values_are_formatted_like_prometheus_client(value: float) -> None:
    assert format_value(value) == floatToGoString(value)

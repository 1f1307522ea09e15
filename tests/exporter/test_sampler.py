"""The sampler thread: what the sidecar's life depends on, whatever a pass does."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from tests.exporter.helpers import wait_until
from trainop.exporter.sampler import Sampler


def test_start_returns_once_the_first_pass_is_done() -> None:
    passes: list[float] = []
    sampler = Sampler(lambda: passes.append(time.monotonic()), every=60)
    try:
        assert sampler.start(wait_first=5) is True
        assert len(passes) == 1  # served from the first scrape on, not 60 s later
    finally:
        sampler.stop()


def _crash_on_second_pass(passes: list[int]) -> None:
    passes.append(1)
    if len(passes) == 2:
        raise RuntimeError("a bug in one pass")


@pytest.mark.parametrize(
    "sample",
    [
        pytest.param(lambda passes: passes.append(1), id="healthy (control)"),
        pytest.param(_crash_on_second_pass, id="one pass crashes"),
    ],
)
def test_sampling_goes_on_after_any_pass(sample: Callable[[list[int]], object]) -> None:
    passes: list[int] = []
    sampler = Sampler(lambda: sample(passes), every=0.01)
    sampler.start(wait_first=5)
    try:
        wait_until(lambda: len(passes) >= 5, 5, "five passes")
    finally:
        sampler.stop()


def test_stop_does_not_wait_for_a_pass_stuck_in_the_driver() -> None:
    stuck = threading.Event()
    release = threading.Event()

    def hang() -> None:
        stuck.set()
        release.wait()

    sampler = Sampler(hang, every=1)
    try:
        assert sampler.start(wait_first=0.1) is False  # the first pass never ended
        assert stuck.wait(5)
        started = time.monotonic()
        sampler.stop(timeout=0.2)
        # SIGTERM handling must end the pod's sidecar, not wait on NVML.
        assert time.monotonic() - started < 5
    finally:
        release.set()

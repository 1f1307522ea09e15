"""The sampler thread: GPU readings are taken on its clock, never inside a scrape.

A scrape that called NVML waited for NVML: one call hung in the driver blocked
every ``/metrics`` request, training metrics included, while request threads
piled up. Here a daemon thread runs one pass every ``every`` seconds; scrapes
serve the last pass with its age. A pass stuck past its own timeouts only ages
the sample, and the collector withdraws a sample that is too old.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class Sampler:
    """Calls ``sample`` every ``every`` seconds on a daemon thread until stopped."""

    def __init__(
        self, sample: Callable[[], None], every: float, name: str = "trainop-gpu-sampler"
    ) -> None:
        self._sample = sample
        self._every = every
        self._stop = threading.Event()
        self._first_done = threading.Event()
        # A daemon: a pass stuck in the driver must never keep the process alive.
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self, wait_first: float) -> bool:
        """Start sampling; wait up to ``wait_first`` seconds for the first pass to end.

        Waiting lets the first scrape see GPUs, and puts what NVML said at
        start-up ("no GPU here") in the log before serving. True if it ended.
        """
        self._thread.start()
        return self._first_done.wait(wait_first)

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("the GPU sampler is stuck in a pass; leaving it behind at shutdown")

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self._sample()
            except Exception:
                # The collector guards each source; this is the last line, so that
                # one bad pass never ends sampling for the life of the pod.
                log.exception("a GPU sampling pass failed")
            self._first_done.set()
            self._stop.wait(max(0.0, self._every - (time.monotonic() - started)))

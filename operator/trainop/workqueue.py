"""A coalescing work queue: many events for one job become one reconcile at a time.

Like controller-runtime's workqueue: a key is never reconciled concurrently with
itself, events that arrive during a reconcile cause exactly one more, errors
are retried with exponential backoff, and a reconcile may ask to be requeued later.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from trainop import operator_metrics as m

log = logging.getLogger("trainop.workqueue")
K = TypeVar("K", bound=Hashable)
# An event that waits longer than this for its reconcile is late (and logged).
LATE_SECONDS = 1.0


class WorkQueue(Generic[K]):  # PEP 695 generics need Python 3.12
    def __init__(
        self,
        work: Callable[[K], Awaitable[float | None]],
        *,
        base_delay: float = 0.2,
        max_delay: float = 30.0,
    ) -> None:
        self._work = work
        self._base, self._max = base_delay, max_delay
        self._running: dict[K, asyncio.Task[None]] = {}
        self._dirty: set[K] = set()
        self._timers: dict[K, asyncio.TimerHandle] = {}
        self._failures: dict[K, int] = {}
        # When each key was first asked for since its last reconcile started: the wait
        # of its oldest event, so one that sits behind a long reconcile shows as late.
        self._since: dict[K, float] = {}
        self._took: dict[K, float] = {}  # how long each key's last reconcile ran
        self._ended: dict[K, float] = {}  # and when it ended
        self._closed = False

    def add(self, key: K) -> None:
        if self._closed:
            return
        self._since.setdefault(key, asyncio.get_running_loop().time())
        if key in self._running:
            self._dirty.add(key)
            return
        self._running[key] = asyncio.create_task(self._run(key), name=f"reconcile {key}")

    def add_after(self, key: K, delay: float) -> None:
        timer = self._timers.get(key)
        loop = asyncio.get_running_loop()
        when = loop.time() + delay
        if timer is not None and timer.when() <= when:
            return  # an earlier wake-up is already due
        if timer is not None:
            timer.cancel()
        self._timers[key] = loop.call_at(when, self._fire, key)

    def forget(self, key: K) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        self._failures.pop(key, None)
        self._since.pop(key, None)
        self._took.pop(key, None)
        self._ended.pop(key, None)

    async def close(self) -> None:
        self._closed = True
        for timer in self._timers.values():
            timer.cancel()
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def drain(self) -> None:
        """Wait until nothing is running (for tests and benchmarks)."""
        while self._running:
            await asyncio.gather(*list(self._running.values()), return_exceptions=True)

    def _fire(self, key: K) -> None:
        self._timers.pop(key, None)
        self.add(key)

    async def _run(self, key: K) -> None:
        try:
            while True:
                self._dirty.discard(key)
                since = self._since.pop(key, None)
                if since is not None:
                    now = asyncio.get_running_loop().time()
                    waited = now - since
                    m.QUEUE_WAIT.observe(waited)
                    # The part not spent behind the job's own reconcile in progress.
                    m.QUEUE_DELAY.observe(now - max(since, self._ended.get(key, since)))
                    if waited > LATE_SECONDS:  # which job, and whether its own work held it
                        log.info(
                            "reconcile of %s starts %.1fs after its event (previous took %.1fs)",
                            key,
                            waited,
                            self._took.get(key, 0.0),
                        )
                began = asyncio.get_running_loop().time()
                try:
                    again = await self._work(key)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    m.RECONCILE_ERRORS.inc()
                    tries = self._failures.get(key, 0) + 1
                    self._failures[key] = tries
                    delay = min(self._base * 2 ** (tries - 1), self._max)
                    # The traceback once per streak; a retry failing the same way adds one line.
                    log.warning(
                        "reconcile of %s failed (try %d); retrying in %.1fs",
                        key,
                        tries,
                        delay,
                        exc_info=tries == 1,
                    )
                    self.add_after(key, delay)
                else:
                    self._failures.pop(key, None)
                    if again is not None:
                        self.add_after(key, again)
                finally:
                    self._ended[key] = asyncio.get_running_loop().time()
                    self._took[key] = self._ended[key] - began
                if key not in self._dirty:
                    return
        finally:
            self._running.pop(key, None)

"""The operator's work queue (trainop/workqueue.py): many events for one job become one
reconcile at a time, none is lost, and how long each waited is measured, so an event
stuck behind a slow reconcile shows as late instead of hiding until a resync."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import REGISTRY

from trainop.workqueue import WorkQueue


def _waits(metric: str = "trainop_operator_queue_wait_seconds") -> tuple[float, float]:
    """(reconciles started, of which late: waited more than 1 s) so far."""
    count = REGISTRY.get_sample_value(f"{metric}_count") or 0.0
    quick = REGISTRY.get_sample_value(f"{metric}_bucket", {"le": "1.0"}) or 0.0
    return count, count - quick


class Recorder:
    """A reconcile that notes its calls and may be held until the test releases it."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.running: set[str] = set()
        self.overlapped = False
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self, key: str) -> None:
        self.overlapped |= key in self.running
        self.running.add(key)
        self.calls.append(key)
        await self.gate.wait()
        self.running.discard(key)


@pytest.mark.parametrize(
    ("adds_while_running", "expected_calls"),
    [
        pytest.param(0, 1, id="one-event-one-reconcile"),
        pytest.param(1, 2, id="an-event-during-a-reconcile-gets-one-more"),
        pytest.param(50, 2, id="fifty-events-during-a-reconcile-get-one-more"),
    ],
)
def test_events_for_one_job_coalesce_and_none_is_lost(
    adds_while_running: int, expected_calls: int
) -> None:
    async def scenario() -> Recorder:
        work = Recorder()
        queue = WorkQueue[str](work)
        work.gate.clear()
        queue.add("job")
        await asyncio.sleep(0)  # the reconcile starts and blocks
        for _ in range(adds_while_running):
            queue.add("job")
        work.gate.set()
        await queue.drain()
        return work

    work = asyncio.run(scenario())
    assert work.calls == ["job"] * expected_calls
    assert not work.overlapped  # never two reconciles of one job at once


def test_an_event_waiting_behind_its_jobs_slow_reconcile_is_late_but_not_delayed() -> None:
    async def scenario() -> None:
        work = Recorder()
        queue = WorkQueue[str](work)
        work.gate.clear()
        queue.add("job")
        await asyncio.sleep(0)
        queue.add("job")  # arrives while the first reconcile is held for 1.2 s
        await asyncio.sleep(1.2)
        work.gate.set()
        await queue.drain()

    started, late = _waits()
    _, delayed = _waits("trainop_operator_queue_delay_seconds")
    asyncio.run(scenario())
    after_started, after_late = _waits()
    assert after_started - started == 2
    assert after_late - late == 1  # the second event waited at least 1.2 s
    # ... all of it behind its own job's reconcile: the queue itself added nothing.
    assert _waits("trainop_operator_queue_delay_seconds")[1] == delayed


def test_a_failing_reconcile_is_retried_with_backoff() -> None:
    calls: list[float] = []

    async def scenario() -> None:
        healed = asyncio.Event()

        async def flaky(key: str) -> None:
            calls.append(asyncio.get_running_loop().time())
            if len(calls) < 3:
                raise RuntimeError("API server unavailable")
            healed.set()

        queue = WorkQueue[str](flaky, base_delay=0.05, max_delay=1.0)
        queue.add("job")
        await healed.wait()
        await queue.drain()

    asyncio.run(asyncio.wait_for(scenario(), timeout=10))
    assert len(calls) == 3
    # The pause doubles: 0.05 s, then 0.1 s (lower bounds: a loaded machine only adds).
    assert calls[1] - calls[0] >= 0.05
    assert calls[2] - calls[1] >= 0.1

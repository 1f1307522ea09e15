"""The one definition of effective training time (trainop_runtime.ettr), as a table:
synthetic progress marks for a clean run, a pod loss, a store loss and a stopped worker,
both as the bench sees them (every step) and as the runner samples them."""

from __future__ import annotations

import pytest

from trainop_runtime.ettr import Mark, compute_ettr


def steady(t0: float, step0: int, steps: int, every: float = 1.0) -> list[Mark]:
    """A mark per step from (t0, step0): one step per `every` seconds."""
    return [(t0 + i * every, step0 + i) for i in range(steps + 1)]


# marks, end of the run (it starts at 0) -> (ratio, kept, start-up, lost, recovery, stalls)
CASES: dict[str, tuple[list[Mark], float, tuple[float, ...]]] = {
    "clean run: only start-up is not training": (
        steady(10, 0, 10),
        20,
        (0.5, 10, 10, 0, 0, 0),
    ),
    # Killed at step 10, resumed from the checkpoint at 5 after 5 s: steps 6-10 were
    # trained twice, and the first time is lost.
    "pod loss: work past the checkpoint is lost, the restart is recovery": (
        steady(0, 0, 10) + steady(15, 5, 10),
        25,
        (0.6, 15, 0, 5, 5, 0),
    ),
    # The store went: every worker restarts from the same checkpoint (step 10, nothing
    # lost) and the 8 s of a new store and rendezvous are recovery.
    "store loss: the rendezvous gap is recovery": (
        steady(0, 0, 10) + steady(18, 10, 10),
        28,
        (20 / 28, 20, 0, 0, 8, 0),
    ),
    # A worker SIGSTOPped for 56 s inside step 11, its peer blocked: the bench's
    # per-step marks see one 56 s step, of which 10 x the median counts as training.
    "stopped worker, every step marked: the stall beyond 10x the median": (
        steady(0, 0, 10) + steady(66, 11, 10),
        76,
        (30 / 76, 30, 0, 0, 0, 46),
    ),
    # The runner samples every second: a stall is marks with no progress.
    "stopped worker, sampled: no progress is recovery": (
        steady(0, 0, 10) + [(10 + k, 10) for k in range(1, 56)] + steady(66, 11, 10),
        76,
        (21 / 76, 21, 0, 0, 55, 0),
    ),
    "resumed from an earlier run: only this run's steps count": (
        steady(5, 100, 10),
        15,
        (10 / 15, 10, 5, 0, 0, 0),
    ),
    "no progress at all": ([], 30, (0.0, 0, 30, 0, 0, 0)),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_effective_training_time_and_its_parts(case: str) -> None:
    marks, end, (ratio, kept, startup, lost, recovery, stalls) = CASES[case]
    got = compute_ettr(marks, start=0.0, end=end)
    assert got.ratio == pytest.approx(ratio)
    parts = (got.kept, got.startup, got.lost, got.recovery, got.stalls)
    assert parts == pytest.approx((kept, startup, lost, recovery, stalls))
    # The parts add up to the wall time: nothing is counted twice or dropped.
    assert sum(parts) == pytest.approx(end)


def test_the_printed_line_says_what_it_means_and_its_parts() -> None:
    got = compute_ettr(steady(0, 0, 10) + steady(15, 5, 10), start=0.0, end=25)
    assert got.line() == (
        "effective training time 60.0% (time in steps kept ÷ wall time): 15.0 s of 25.0 s; "
        "start-up 0.0 s, lost work 5.0 s, recovery 5.0 s, stalls 0.0 s, shutdown 0.0 s"
    )


@pytest.mark.parametrize(
    ("ended_by_last_mark", "shutdown", "recovery"), [(True, 5, 0), (False, 0, 5)]
)
def test_the_tail_after_the_last_mark_is_shutdown_only_when_the_run_ended_there(
    ended_by_last_mark: bool, shutdown: float, recovery: float
) -> None:
    # Succeeded at step 10 (t=20), then 5 s of final checkpoint and processes exiting;
    # a failed run's tail is restarts that never reported, i.e. recovery.
    got = compute_ettr(steady(10, 0, 10), start=0.0, end=25, ended_by_last_mark=ended_by_last_mark)
    assert (got.kept, got.startup, got.shutdown, got.recovery) == (10, 10, shutdown, recovery)
    assert f"shutdown {shutdown:.1f} s" in got.line()

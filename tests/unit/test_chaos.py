"""The local runner's fault-injection schedule (pure: time and step are inputs)."""

from __future__ import annotations

import pytest

from trainop.local.chaos import ChaosClock, kills_left

# Each case: the clock, then (now, reported step, due?) in order; a due tick is
# followed by a kill at that step.
CASES = {
    "off": (ChaosClock(), [(0, 1, False), (999, 500, False)]),
    "seconds count from the first step, not from launch": (
        ChaosClock(seconds=30),
        [(0, None, False), (50, 0, False), (60, 1, False), (89, 5, False), (90, 6, True)],
    ),
    "after a kill, recovery time does not count": (
        ChaosClock(seconds=30),
        # killed at step 6 (t=90); resumed from checkpoint step 4; back past 6 at t=140
        [
            (60, 1, False),
            (90, 6, True),
            (120, 4, False),
            (139, 6, False),
            (140, 7, False),
            (169, 9, False),
            (170, 10, True),
        ],
    ),
    "steps: every N steps of new progress": (
        ChaosClock(steps=20),
        [(0, 19, False), (1, 20, True), (2, 10, False), (3, 39, False), (4, 40, True)],
    ),
    "steps: a late sample still kills once": (
        ChaosClock(steps=20),
        [(0, 23, True), (1, 24, False), (2, 43, True)],
    ),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_chaos_schedule(case: str) -> None:
    clock, ticks = CASES[case]
    for now, step, want in ticks:
        got = clock.due(float(now), step)
        assert got is want, (case, now, step)
        if got:
            assert step is not None
            clock.killed(step)


RESUMED = {
    # (first step this run reported, then (step, due?) ticks)
    "steps count from the resume point": (31, 20, [(31, False), (49, False), (50, True)]),
    "a fresh run counts from step 0": (1, 20, [(1, False), (19, False), (20, True)]),
}


@pytest.mark.parametrize("case", RESUMED, ids=list(RESUMED))
def test_a_resumed_run_is_not_killed_on_its_first_report(case: str) -> None:
    first, every, ticks = RESUMED[case]
    clock = ChaosClock(steps=every)
    clock.resumed(first)
    for now, (step, want) in enumerate(ticks):
        assert clock.due(float(now), step) is want, (case, step)


# (kills so far, restarts in status, backoffLimit) -> kills still allowed
BUDGET = {
    "the quickstart's budget of 5 allows 4 kills": (0, 0, 5, 4),
    "after 4 kills the last restart is kept": (4, 4, 5, 0),
    "status trailing the kills: kills count": (3, 1, 5, 1),
    "a kill that cost two restarts counts twice": (2, 4, 5, 0),
    "a budget of 1 allows none": (0, 0, 1, 0),
    "a budget of 0 allows none": (0, 0, 0, 0),
}


@pytest.mark.parametrize("case", BUDGET, ids=list(BUDGET))
def test_fault_injection_never_spends_the_last_restart(case: str) -> None:
    kills, restarts, limit, left = BUDGET[case]
    assert kills_left(kills, restarts, limit) == left

"""Effective training time ratio (ETTR): one definition for the runner and the bench.

    ETTR = time spent in steps that were kept ÷ wall time, start-up included.

A step is *kept* when no later restart redid it. Its time is the interval from the
previous progress mark to the mark that reported it (spread evenly over the steps a
mark covers, since the runner samples progress rather than seeing every step). The
rest of the wall time is split into parts a user can act on:

- start-up: from the start of the run to the first progress mark;
- lost work: time in steps a restart threw away (trained past the last checkpoint);
- stalls: time a step took beyond STALL_FACTOR x the median step (a hung or stopped
  worker, its peers blocked in a collective);
- shutdown: from the last progress mark to the end of a run that finished or was told
  to stop (the final checkpoint, processes exiting), when the caller says it ended so;
- recovery: everything else: restarts, rendezvous, checkpoint loads, no progress.

Purely computational: the caller passes the marks and the clock readings.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

STALL_FACTOR = 10.0

# (time, step): by `time`, the job had completed `step`. A step lower than the one
# before it is a restart that resumed from a checkpoint at (or below) that step.
Mark = tuple[float, int]


@dataclass(frozen=True)
class Ettr:
    wall: float
    kept: float
    startup: float
    lost: float
    stalls: float
    kept_steps: int
    shutdown: float = 0.0

    @property
    def recovery(self) -> float:
        rest = self.wall - self.kept - self.startup - self.lost - self.stalls - self.shutdown
        return max(0.0, rest)

    @property
    def ratio(self) -> float | None:
        return self.kept / self.wall if self.wall > 0 else None

    def line(self) -> str:
        ratio = f"{self.ratio:.1%}" if self.ratio is not None else "n/a"
        return (
            f"effective training time {ratio} (time in steps kept ÷ wall time): "
            f"{self.kept:.1f} s of {self.wall:.1f} s; start-up {self.startup:.1f} s, "
            f"lost work {self.lost:.1f} s, recovery {self.recovery:.1f} s, "
            f"stalls {self.stalls:.1f} s, shutdown {self.shutdown:.1f} s"
        )


def compute_ettr(
    marks: Sequence[Mark], *, start: float, end: float, ended_by_last_mark: bool = False
) -> Ettr:
    """ETTR of a run from `start` to `end` with these progress marks, in time order.
    `ended_by_last_mark`: the run finished (or was stopped) after its last mark, so the
    time after it is shutdown, not a recovery that never reported."""
    wall = max(0.0, end - start)
    if not marks:
        return Ettr(wall=wall, kept=0.0, startup=wall, lost=0.0, stalls=0.0, kept_steps=0)
    # Intervals that advanced the step: (seconds, first step, last step).
    spans = [
        (t - t0, s0 + 1, s) for (t0, s0), (t, s) in itertools.pairwise(marks) if s > s0 and t <= end
    ]
    per_step = [seconds / (last - first + 1) for seconds, first, last in spans]
    cap = STALL_FACTOR * statistics.median(per_step) if per_step else 0.0
    ledger: dict[int, float] = {}  # step -> seconds of its latest training
    lost = stalls = 0.0
    for seconds, first, last in spans:
        each = seconds / (last - first + 1)
        if each > cap:
            stalls += (each - cap) * (last - first + 1)
            each = cap
        for step in range(first, last + 1):
            lost += ledger.get(step, 0.0)  # trained before, thrown away by a restart
            ledger[step] = each
    # Steps the run ended above its last resume point are kept: nothing redid them.
    return Ettr(
        wall=wall,
        kept=sum(ledger.values()),
        startup=max(0.0, marks[0][0] - start),
        lost=lost,
        stalls=stalls,
        kept_steps=len(ledger),
        shutdown=max(0.0, end - marks[-1][0]) if ended_by_last_mark else 0.0,
    )

"""When the local runner's fault injection strikes. Pure: the caller passes the
clock and the job's reported step, so the schedule is testable and independent of
how fast this machine is."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ChaosClock:
    """Kill every `seconds` of training, or every `steps` steps of new progress.

    Both count only from the moment training moves past the step where the last
    kill (or the start) happened: process start, rendezvous and checkpoint load
    are not training, and a kill during a recovery would only test the same
    recovery twice. Time since launch would make a fast machine finish before the
    first kill and a slow one never get past startup.
    """

    seconds: float | None = None
    steps: int | None = None
    baseline: int = 0  # step reported when the last kill happened (0 at start)
    progress_since: float | None = None  # when the step first went past baseline

    @property
    def enabled(self) -> bool:
        return bool(self.seconds) or bool(self.steps)

    def due(self, now: float, step: int | None) -> bool:
        if not self.enabled or step is None or step <= self.baseline:
            return False
        if self.progress_since is None:
            self.progress_since = now
        if self.steps and step >= self.baseline + self.steps:
            return True
        return bool(self.seconds) and now - self.progress_since >= (self.seconds or 0.0)

    def resumed(self, first_step: int) -> None:
        """The first step this run reported: a run resumed from a checkpoint counts its
        new progress from there, or its first report would already be due."""
        self.baseline = max(self.baseline, first_step - 1)

    def killed(self, step: int) -> None:
        """Arm for the next kill: it needs new progress past this step."""
        self.baseline = max(self.baseline, step)
        self.progress_since = None


def kills_left(kills: int, restarts: int, backoff_limit: int) -> int:
    """How many more kills the restart budget allows. Purely computational.

    Each kill spends at least one restart (more if it lands mid-recovery), and the
    count in status trails the kill, so both are taken; one restart is always kept for
    a failure the job did not stage. Fault injection then shows recovery and never
    becomes the reason a job fails: `--kill-every-steps 20` on the quickstart (200
    steps, backoffLimit 5) would otherwise kill 9 times and end BackoffLimitExceeded.
    """
    return max(0, backoff_limit - 1 - max(kills, restarts))

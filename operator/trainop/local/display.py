"""What `trainop run` shows while it runs: one live progress line, with events above it.

On a terminal the line is redrawn in place (rich's Live) and events scroll above it.
Anywhere else (a pipe, a CI log) the line is printed again only when what it shows
changed. Everything here but `Display` is pure: status and marks in, values out.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from trainop.api.status import Phase, TrainingJobStatus
from trainop_runtime.ettr import Mark

# Throughput over this much recent training: long enough to smooth out the workers'
# report interval, short enough to show a slowdown within the minute.
RATE_WINDOW_SECONDS = 30.0
BAR_WIDTH = 24
PHASE_STYLES = {
    Phase.RUNNING.value: "green",
    Phase.SUCCEEDED.value: "bold green",
    Phase.FAILED.value: "bold red",
    Phase.RESTARTING.value: "yellow",
}


@dataclass(frozen=True)
class View:
    """One frame of the live line."""

    phase: str
    workers: str
    step: int | None
    total: int | None
    loss: float | None
    steps_per_second: float | None
    eta_seconds: float | None
    restarts: int
    budget: int
    checkpoint: int | None  # the newest durable one

    @property
    def key(self) -> tuple[object, ...]:
        """What off a terminal makes a new line worth printing. Throughput and ETA are
        left out: they follow the step, and alone (a stall) they would print every tick."""
        return (
            self.phase,
            self.workers,
            self.step,
            self.total,
            format_loss(self.loss),
            self.restarts,
            self.budget,
            self.checkpoint,
        )


def compute_rate(marks: Sequence[Mark], window: float = RATE_WINDOW_SECONDS) -> float | None:
    """Steps per second over the last `window` seconds of (time, step) marks, counted
    from the last resume at most: a step lower than a later one is before a rollback."""
    if not marks:
        return None
    end_time, end_step = marks[-1]
    start_time, start_step = end_time, end_step
    for time, step in reversed(marks):
        if step > start_step or end_time - time > window:
            break
        start_time, start_step = time, step
    if end_time <= start_time:
        return None
    return (end_step - start_step) / (end_time - start_time)


def compute_view(status: TrainingJobStatus, budget: int, rate: float | None) -> View:
    p = status.progress
    step = p.step if p else None
    total = p.total_steps if p else None
    finished = status.phase is not None and status.phase.finished
    eta = None
    if rate and step is not None and total and step < total and not finished:
        eta = (total - step) / rate
    return View(
        phase=status.phase.value if status.phase else Phase.PENDING.value,
        workers=status.workers or "0/0",
        step=step,
        total=total,
        loss=p.loss if p else None,
        steps_per_second=rate,
        eta_seconds=eta,
        restarts=status.restarts,
        budget=budget,
        checkpoint=p.checkpoint_step if p else None,
    )


def format_loss(loss: float | None) -> str | None:
    return None if loss is None else f"{loss:.4g}"


def format_duration(seconds: float) -> str:
    """H:MM:SS, or M:SS under an hour."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _step(view: View) -> str | None:
    if view.step is None:
        return None
    if view.total:
        return f"step {view.step}/{view.total} ({100 * view.step // view.total}%)"
    return f"step {view.step}"


def _progress(view: View) -> list[str]:
    """How far, and how long to go: beside the bar on a terminal."""
    eta = f"ETA {format_duration(view.eta_seconds)}" if view.eta_seconds is not None else None
    return [f for f in (_step(view), eta) if f is not None]


def _details(view: View) -> list[str]:
    """The rest: under the bar on a terminal, where one line would wrap mid-field."""
    loss = format_loss(view.loss)
    rate = view.steps_per_second
    fields = [
        f"workers {view.workers}",
        f"loss {loss}" if loss is not None else None,
        f"{rate:.3g} steps/s" if rate is not None else None,
        f"restarts {view.restarts}/{view.budget}",
        f"ckpt @{view.checkpoint}" if view.checkpoint is not None else None,
    ]
    return [f for f in fields if f is not None]


def view_line(view: View) -> str:
    """The plain-text line, for logs and pipes."""
    return " | ".join([f"{view.phase:<10}", *_progress(view), *_details(view)])


def render(view: View) -> RenderableType:
    """The terminal's live lines: the phase, a bar when the total is known and the
    progress, then the details under the bar."""
    bar = Table.grid(padding=(0, 1))
    bar.add_row(
        *(
            [ProgressBar(total=view.total, completed=view.step, width=BAR_WIDTH)]
            if view.total and view.step is not None
            else []
        ),
        Text(" | ".join(_progress(view))),
    )
    grid = Table.grid(padding=(0, 1))
    phase = Text(f"{view.phase:<10}", style=PHASE_STYLES.get(view.phase, ""))
    grid.add_row(phase, Group(bar, Text(" | ".join(_details(view)))))
    return grid


def resume_note(found_checkpoints: bool, reported: Sequence[int]) -> str | None:
    """The line announcing a resume, given whether the checkpoint directory held anything
    at start and the checkpoint steps the workers report with their first steps. The
    lowest is the one they loaded: only the writer has saved since, and not always."""
    if not found_checkpoints or not reported:
        return None
    return f"resuming from checkpoint step {min(reported)}"


class Display:
    """Views and events to `console`: in place on a terminal, a line per change elsewhere.

    Writes never raise OSError: after SIGHUP the terminal is gone, and a failed write
    must not cut the runner's cleanup short."""

    def __init__(self, console: Console, every: float) -> None:
        self.console = console
        self.every = every  # off a terminal, the least time between two lines
        self.in_place = console.is_terminal and not console.is_dumb_terminal
        self._live: Live | None = None
        self._last_key: tuple[object, ...] | None = None
        self._last_time: float | None = None

    def __enter__(self) -> Display:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def event(self, line: str) -> None:
        """A line that stays: on a terminal it scrolls above the live line."""
        with contextlib.suppress(OSError):
            # Text, not str: a "[warning]" in the line is not rich markup.
            self.console.print(Text(line), soft_wrap=not self.in_place)

    def show(self, view: View, now: float) -> None:
        if self.in_place:
            self._draw(view)
            return
        if view.key == self._last_key:
            return
        if self._last_time is not None and now - self._last_time < self.every:
            return  # a change shows at the next line; the key still differs then
        self._last_time = now
        self._print(view)

    def final(self, view: View) -> None:
        """The last frame, throttle or not: the summary below it must agree with it."""
        if self.in_place:
            self._draw(view)
            self.close()
        elif view.key != self._last_key:
            self._print(view)

    def close(self) -> None:
        """Leave the live line where it is, as the last frame, and show the cursor."""
        if self._live is not None:
            with contextlib.suppress(OSError):
                self._live.stop()
            self._live = None

    def _draw(self, view: View) -> None:
        with contextlib.suppress(OSError):
            if self._live is None:
                self._live = Live(
                    render(view),
                    console=self.console,
                    # No refresh thread: the runner starts none (its children are forked
                    # with a preexec_fn), and it redraws every tick anyway.
                    auto_refresh=False,
                    redirect_stdout=False,
                    redirect_stderr=False,
                )
                self._live.start(refresh=True)
            else:
                self._live.update(render(view), refresh=True)

    def _print(self, view: View) -> None:
        self._last_key = view.key
        self.event(view_line(view))

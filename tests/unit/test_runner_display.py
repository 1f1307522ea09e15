"""What `trainop run` prints: the live line (in place on a terminal, one line per change
elsewhere), the resume announcement and the summary's wording. No processes here."""

from __future__ import annotations

import io
import re
from typing import Any

import pytest
from rich.console import Console

from trainop.api.status import Phase, Progress, TrainingJobStatus
from trainop.local.display import (
    Display,
    View,
    compute_rate,
    compute_view,
    resume_note,
    view_line,
)
from trainop.local.runner import Summary, stop_reason
from trainop_runtime.ettr import Mark


def status(phase: Phase | None = Phase.RUNNING, restarts: int = 2, **progress: Any) -> Any:
    return TrainingJobStatus(
        phase=phase,
        workers="2/2",
        restarts=restarts,
        progress=Progress(**progress) if progress else None,
    )


def view(step: int, loss: float = 2.5, rate: float | None = 10.0, **kw: Any) -> View:
    fields: dict[str, Any] = {
        "phase": "Running",
        "workers": "2/2",
        "step": step,
        "total": 200,
        "loss": loss,
        "steps_per_second": rate,
        "eta_seconds": None,
        "restarts": 2,
        "budget": 5,
        "checkpoint": 100,
    }
    return View(**(fields | kw))


# (time, step) marks -> steps per second
RATES: dict[str, tuple[list[Mark], float | None]] = {
    "no marks": ([], None),
    "one mark: no interval yet": ([(5.0, 10)], None),
    "steady": ([(0.0, 0), (1.0, 10), (2.0, 20)], 10.0),
    "stalled": ([(0.0, 50), (1.0, 50), (2.0, 50)], 0.0),
    "only the last 30 s": ([(0.0, 0), (40.0, 10), (60.0, 70)], 3.0),
    # Killed at 108, resumed from checkpoint 100: the rollback is not negative speed.
    "counted from the resume": ([(0.0, 90), (1.0, 108), (5.0, 100), (7.0, 110)], 5.0),
}


@pytest.mark.parametrize("case", RATES, ids=list(RATES))
def test_throughput_is_steps_per_second_since_the_last_resume(case: str) -> None:
    marks, want = RATES[case]
    assert compute_rate(marks) == want


# status, steps/s -> the plain line
LINES = {
    "nothing reported yet": (
        status(Phase.PENDING, restarts=0),
        None,
        "Pending    | workers 2/2 | restarts 0/5",
    ),
    "every field, the loss to 4 significant digits": (
        status(step=120, total_steps=200, loss=2.345678, checkpoint_step=100),
        4.0,
        "Running    | step 120/200 (60%) | ETA 0:20 | workers 2/2 | loss 2.346 | 4 steps/s | "
        "restarts 2/5 | ckpt @100",
    ),
    "small loss, slow steps, ETA over an hour": (
        status(step=10, total_steps=5000, loss=0.000123456),
        0.5,
        "Running    | step 10/5000 (0%) | ETA 2:46:20 | workers 2/2 | loss 0.0001235 | "
        "0.5 steps/s | restarts 2/5",
    ),
    "no total: no percentage, no ETA": (
        status(step=7, loss=3.0),
        2.0,
        "Running    | step 7 | workers 2/2 | loss 3 | 2 steps/s | restarts 2/5",
    ),
    "finished: no ETA": (
        status(Phase.SUCCEEDED, step=200, total_steps=200, loss=1.5, checkpoint_step=200),
        None,
        "Succeeded  | step 200/200 (100%) | workers 2/2 | loss 1.5 | restarts 2/5 | ckpt @200",
    ),
}


@pytest.mark.parametrize("case", LINES, ids=list(LINES))
def test_the_plain_line_shows_every_field_rounded(case: str) -> None:
    st, rate, want = LINES[case]
    assert view_line(compute_view(st, 5, rate)) == want


def screen(raw: str) -> list[str]:
    """What a terminal shows after `raw`: just enough of one for rich's Live (carriage
    return, erase line, cursor up; colours and cursor visibility dropped)."""
    rows, row, col = [""], 0, 0
    for piece in re.split(r"(\x1b\[[0-9;?]*[A-Za-z]|\r|\n)", raw):
        if piece == "\n":
            row, col = row + 1, 0
            rows += [""] * (row + 1 - len(rows))
        elif piece == "\r":
            col = 0
        elif piece == "\x1b[2K":
            rows[row] = ""
        elif m := re.fullmatch(r"\x1b\[(\d*)A", piece):
            row -= int(m.group(1) or 1)
        elif piece.startswith("\x1b["):
            continue  # colours, cursor visibility
        elif piece:
            line = rows[row].ljust(col)
            rows[row] = line[:col] + piece + line[col + len(piece) :]
            col += len(piece)
    return [r.rstrip() for r in rows if r.strip()]


def test_on_a_terminal_the_line_updates_in_place_under_the_events() -> None:
    out = io.StringIO()
    console = Console(file=out, record=True, force_terminal=True, width=120)
    with Display(console, every=2.0) as display:
        display.event("resuming from checkpoint step 100")
        for step in (101, 102, 102, 103):
            display.show(view(step, loss=2.345678, eta_seconds=9.7), now=0.0)
        display.event("[warning] Restarting: worker 1 exited")  # not rich markup
        display.final(view(110, rate=None, phase="Succeeded", checkpoint=110))
        display.event("job Succeeded in 12.0 s")
    exported = console.export_text()
    assert "resuming from checkpoint step 100" in exported
    assert "[warning] Restarting: worker 1 exited" in exported
    shown = screen(out.getvalue())
    # Three events, and two lines for all the frames: each drawn over the one before.
    assert len(shown) == 5, shown
    assert shown[0] == "resuming from checkpoint step 100"
    assert shown[1] == "[warning] Restarting: worker 1 exited"
    assert re.fullmatch(r"Succeeded  [━╸╺]{24} step 110/200 \(55%\)", shown[2]), shown[2]
    assert shown[3] == " " * 11 + "workers 2/2 | loss 2.5 | restarts 2/5 | ckpt @110"
    assert shown[4] == "job Succeeded in 12.0 s"
    # The frames in between had every field.
    assert "step 103/200 (51%) | ETA 0:10 " in exported
    assert "workers 2/2 | loss 2.346 | 10 steps/s | restarts 2/5 | ckpt @100" in exported
    assert out.getvalue().count("\r\x1b[2K") >= 4


# (view, time) in order -> the lines printed, with every=2 s
PLAIN = {
    "the same view is printed once": (
        [(view(5), 0.0), (view(5), 3.0), (view(5), 6.0)],
        [5],
    ),
    "throughput alone (a stall) is not news": (
        [(view(5, rate=10.0), 0.0), (view(5, rate=2.0), 3.0), (view(5, rate=0.5), 6.0)],
        [5],
    ),
    "a loss change under the shown precision is not news": (
        [(view(5, loss=2.34561), 0.0), (view(5, loss=2.34564), 3.0)],
        [5],
    ),
    "changes within the interval wait for the next line": (
        [(view(5), 0.0), (view(6), 0.5), (view(7), 1.0), (view(7), 2.5)],
        [5, 7],
    ),
    "a change after the interval prints at once": (
        [(view(5), 0.0), (view(6), 2.0), (view(6), 4.0), (view(7), 6.5)],
        [5, 6, 7],
    ),
}


@pytest.mark.parametrize("case", PLAIN, ids=list(PLAIN))
def test_off_a_terminal_a_line_is_printed_only_when_it_changed(case: str) -> None:
    frames, want_steps = PLAIN[case]
    out = io.StringIO()
    display = Display(Console(file=out, width=80), every=2.0)
    assert not display.in_place
    for frame, now in frames:
        display.show(frame, now)
    display.final(frames[-1][0])  # the last frame again: printed already
    lines = out.getvalue().splitlines()
    assert [int(re.findall(r"step (\d+)/", line)[0]) for line in lines] == want_steps
    assert len(set(lines)) == len(lines)
    assert all(len(line) > 80 for line in lines), "a pipe gets whole lines, not wrapped"


def test_off_a_terminal_the_final_frame_is_printed_whatever_the_interval() -> None:
    out = io.StringIO()
    display = Display(Console(file=out, width=200), every=2.0)
    display.show(view(5), 0.0)
    display.show(view(6), 0.5)  # within the interval: held back
    display.final(view(9, phase="Succeeded"))
    assert [line.split(" | ")[1] for line in out.getvalue().splitlines()] == [
        "step 5/200 (2%)",
        "step 9/200 (4%)",
    ]


# checkpoint files at start, checkpoint steps in the first reports -> announcement
RESUMES = {
    "fresh directory": (False, [], None),
    # A fresh run can have saved already by the time its first step is seen.
    "fresh directory, saved since": (False, [20], None),
    "resumed": (True, [48], "resuming from checkpoint step 48"),
    # The non-writer still reports what it loaded; the writer may have saved since.
    "resumed, the writer saved since": (True, [60, 48], "resuming from checkpoint step 48"),
    "files, but the script reports no checkpoint": (True, [], None),
}


@pytest.mark.parametrize("case", RESUMES, ids=list(RESUMES))
def test_a_resume_is_announced_with_the_checkpoint_loaded(case: str) -> None:
    found, reported, want = RESUMES[case]
    assert resume_note(found, reported) == want


# checkpoint step reported, checkpoint files -> why the interrupted run ended
STOPS = {
    "checkpoint reported": (
        120,
        True,
        "stopped; run the same command again to resume from step 120",
    ),
    "files from a script that reports none": (
        None,
        True,
        "stopped; run the same command again to resume from its checkpoint",
    ),
    "nothing saved": (
        None,
        False,
        "stopped before any checkpoint was saved: nothing to resume, a rerun starts over",
    ),
}


@pytest.mark.parametrize("case", STOPS, ids=list(STOPS))
def test_resume_is_offered_only_when_a_checkpoint_exists(case: str) -> None:
    step, files, want = STOPS[case]
    assert stop_reason(step, files) == want


def summary(**kw: Any) -> Summary:
    fields: dict[str, Any] = {
        "phase": "Succeeded",
        "reason": "Succeeded",
        "wall_seconds": 61.25,
        "steps": 200,
        "first_step": 1,
        "steps_run": 200,
        "checkpoint_step": 200,
        "first_loss": 5.545177459716797,
        "last_loss": 2.0123456789,
        "restarts": 0,
        "in_place_restarts": 0,
        "kills": 0,
        "effective_ratio": 0.9,
        "ettr": "ettr",
        "ettr_seconds": {},
        "devices": "on CPU",
        "energy_joules": None,
        "signal": None,
    }
    return Summary(**(fields | kw))


# summary fields -> its first two lines
SUMMARIES = {
    "succeeded: the phase once, losses rounded": (
        summary(),
        "job Succeeded in 61.2 s, on CPU",
        "steps 200, 200 in this run; last checkpoint at step 200; loss 5.545 -> 2.012",
    ),
    "failed: the reason adds something": (
        summary(phase="Failed", reason="BackoffLimitExceeded", checkpoint_step=120),
        "job Failed (BackoffLimitExceeded) in 61.2 s, on CPU",
        "steps 200, 200 in this run; last checkpoint at step 120; loss 5.545 -> 2.012",
    ),
    "a script that reports neither loss nor checkpoint": (
        summary(checkpoint_step=None, first_loss=None, last_loss=None),
        "job Succeeded in 61.2 s, on CPU",
        "steps 200, 200 in this run; no checkpoint; no loss reported",
    ),
    "interrupted, resumed earlier": (
        summary(
            phase="Interrupted",
            reason=stop_reason(None, False),
            first_step=49,
            steps_run=10,
            steps=58,
            checkpoint_step=None,
        ),
        "job Interrupted (stopped before any checkpoint was saved: nothing to resume, "
        "a rerun starts over) in 61.2 s, on CPU",
        "steps 58, 10 in this run (resumed at step 49); no checkpoint; loss 5.545 -> 2.012",
    ),
}


@pytest.mark.parametrize("case", SUMMARIES, ids=list(SUMMARIES))
def test_the_summary_says_each_thing_once_and_rounds(case: str) -> None:
    the_summary, head, steps = SUMMARIES[case]
    assert the_summary.lines()[:2] == [head, steps]

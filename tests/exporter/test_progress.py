"""The trainer's progress report: parsed strictly, judged fresh or stale."""

from __future__ import annotations

import json
import math

import pytest

from trainop.exporter.progress import (
    DEFAULT_STALE_SECONDS,
    Progress,
    assess_progress,
    parse_progress,
)


def test_parse_full_report() -> None:
    text = json.dumps(
        {
            "step": 10,
            "totalSteps": 100,
            "samples": 320,
            "loss": 1.5,
            "stepSeconds": 0.25,
            "samplesPerSecond": 128,
            "restarts": 2,
            "worldSize": 8,
            "checkpointStep": 5,
            "checkpointTime": 1000.0,
            "time": 1010,
            "somethingNewer": {"x": 1},
        }
    )
    progress, rejected = parse_progress(text)
    assert progress == Progress(
        step=10,
        total_steps=100,
        samples=320,
        loss=1.5,
        step_seconds=0.25,
        samples_per_second=128.0,
        restarts=2,
        world_size=8,
        checkpoint_step=5,
        checkpoint_time=1000.0,
        time=1010.0,
    )
    assert rejected == ()


@pytest.mark.parametrize(
    ("doc", "expected", "rejected"),
    [
        pytest.param({}, Progress(), (), id="empty: nothing reported yet"),
        pytest.param({"step": None}, Progress(), (), id="null means not reported"),
        pytest.param({"step": "12"}, Progress(), ("step",), id="string step ignored"),
        pytest.param({"step": True}, Progress(), ("step",), id="bool is not a count"),
        pytest.param({"step": 1.5}, Progress(), ("step",), id="fractional step ignored"),
        pytest.param({"time": "now"}, Progress(), ("time",), id="bad time ignored"),
        pytest.param(
            {"step": 3, "samples": [1]}, Progress(step=3), ("samples",), id="one bad key, rest kept"
        ),
    ],
)
def test_parse_tolerates_bad_values(
    doc: dict[str, object], expected: Progress, rejected: tuple[str, ...]
) -> None:
    assert parse_progress(json.dumps(doc)) == (expected, rejected)


def test_nan_loss_is_kept_because_divergence_is_news() -> None:
    progress, rejected = parse_progress('{"loss": NaN, "time": NaN}')
    assert progress.loss is not None
    assert math.isnan(progress.loss)
    assert progress.time is None
    assert rejected == ("time",)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param('{"step": 12, "loss": 2.', id="torn mid-write"),
        pytest.param("", id="empty file"),
        pytest.param("[1, 2]", id="not an object"),
    ],
)
def test_parse_rejects_unreadable_reports(text: str) -> None:
    with pytest.raises(ValueError, match=r".*"):
        parse_progress(text)


@pytest.mark.parametrize(
    ("progress", "mtime", "up", "report_time"),
    [
        pytest.param(None, None, False, None, id="missing"),
        pytest.param(Progress(step=1, time=990.0), 990.0, True, 990.0, id="fresh"),
        pytest.param(Progress(step=1, time=600.0), 999.0, False, 600.0, id="stale by its own time"),
        pytest.param(Progress(step=1), 600.0, False, 600.0, id="no time: stale by mtime"),
        pytest.param(Progress(step=1), 990.0, True, 990.0, id="no time: fresh by mtime"),
        pytest.param(Progress(step=1, time=700.0), 700.0, True, 700.0, id="exactly at the limit"),
    ],
)
def test_assess_freshness(
    progress: Progress | None, mtime: float | None, up: bool, report_time: float | None
) -> None:
    view = assess_progress(progress, file_mtime=mtime, now=1000.0, stale_after=300.0)
    assert view.up is up
    assert view.report_time == report_time
    # A stale or missing report must not leak its values into the scrape.
    assert (view.progress is not None) is up


@pytest.mark.parametrize(
    ("age", "step_seconds", "up"),
    [
        pytest.param(5.0, 0.4, True, id="live: reports every second"),
        pytest.param(59.0, 0.4, True, id="a 59 s pause"),
        pytest.param(61.0, 0.4, False, id="hung: down after a minute, not five"),
        pytest.param(61.0, None, False, id="no step time: the minute alone"),
        pytest.param(85.0, 30.0, True, id="30 s steps: 3 steps of silence allowed"),
        pytest.param(95.0, 30.0, False, id="30 s steps: 3 missed"),
    ],
)
def test_default_staleness_follows_the_writers_cadence(
    age: float, step_seconds: float | None, up: bool
) -> None:
    progress = Progress(step=7, step_seconds=step_seconds, time=1000.0 - age)
    view = assess_progress(progress, file_mtime=None, now=1000.0, stale_after=DEFAULT_STALE_SECONDS)
    assert view.up is up
    if not up:
        limit = max(DEFAULT_STALE_SECONDS, 3 * (step_seconds or 0))
        assert view.reason == f"last report is {age:.0f} s old (stale after {limit:.0f} s)"

"""The operator's /metrics as Prometheus first sees it, before anything has happened."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from trainop import operator_metrics as m
from trainop.api.spec import Reason


def _restart_series() -> dict[tuple[str, str], float]:
    text = generate_latest(REGISTRY).decode()
    return {
        (s.labels["reason"], s.labels["counted"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "trainop_operator_restarts_total"
    }


@pytest.mark.parametrize(
    ("reason", "counted"),
    [
        *(
            pytest.param(r.value, counted, id=f"{r.value}, counted={counted}")
            for r in Reason
            for counted in ("true", "false")
        ),
        pytest.param("InPlace", "true", id="InPlace (torchrun's own restarts)"),
    ],
)
def test_every_restart_series_exists_before_its_first_restart(reason: str, counted: str) -> None:
    # increase() needs a sample before the first restart: a series first scraped at 1
    # made TrainopRestartStorm need 6 replacements to reach its threshold of 5.
    assert (reason, counted) in _restart_series()


def test_restart_series_start_at_zero() -> None:
    series = _restart_series()
    untouched = set(m.RESTART_LABELS) - {k for k, v in series.items() if v}
    # Other tests in this process may have counted restarts; the rest must read 0.
    assert all(series[k] == 0 for k in untouched)
    assert len(series) == len(m.RESTART_LABELS)

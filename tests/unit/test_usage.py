"""status.usage as a table: the sidecars' per-pod totals, seen reconcile after reconcile,
summed into what the job cost, across pod replacements, sidecar and operator restarts."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from tests.factories import NOW, failed, observed, store, worker
from trainop.api import constants as c
from trainop.api.status import Usage
from trainop.core.config import OperatorConfig
from trainop.core.observe import ObservedPod
from trainop.core.plan import compute_plan

CFG = OperatorConfig()


def rep(pod: ObservedPod, gpu: float, idle: float, energy: float) -> ObservedPod:
    """The pod with its sidecar's totals on the progress annotation (beside a step)."""
    progress = {
        "step": 7,
        c.USAGE_GPU_SECONDS: gpu,
        c.USAGE_IDLE_GPU_SECONDS: idle,
        c.USAGE_ENERGY_JOULES: energy,
    }
    return replace(pod, progress=progress)


def w(slot: int, uid: str, *totals: float) -> ObservedPod:
    return rep(worker(slot, uid=uid), *totals)


# Each row: what the sidecars reported at successive reconciles, and the job's totals
# (GPU-seconds, idle GPU-seconds, joules) after the last one.
ROWS: list[Any] = [
    pytest.param([[w(0, "a", 100, 10, 5000), w(1, "b", 100, 0, 6000)]], (200, 10, 11000), id="two"),
    pytest.param(
        [[w(0, "a", 100, 10, 5000)], [w(0, "a", 160, 10, 9000)]],
        (160, 10, 9000),
        id="the-next-report-adds-only-the-difference",
    ),
    pytest.param(
        [[w(0, "a", 100, 10, 5000)], [w(0, "b", 20, 5, 900)]],
        (120, 15, 5900),
        id="a-replaced-pod-keeps-its-share",
    ),
    pytest.param(
        [[w(0, "a", 100, 10, 5000)], [], [w(0, "b", 20, 5, 900)]],
        (120, 15, 5900),
        id="gone-for-a-reconcile-then-replaced",
    ),
    pytest.param(
        [[w(0, "a", 100, 10, 5000)], [w(0, "a", 30, 0, 1000)]],
        (130, 10, 6000),
        id="a-restarted-sidecar-counts-from-zero-again",
    ),
    pytest.param(
        [[w(0, "a", 100, 10, 5000)], [worker(0, uid="a")], [w(0, "a", 110, 10, 5500)]],
        (110, 10, 5500),
        id="a-pod-without-a-report-once-is-not-counted-again",
    ),
    pytest.param(
        [[w(0, "a", 100, 10, 5000)], [rep(failed(0, uid="a"), 120, 10, 6000)]],
        (120, 10, 6000),
        id="a-failed-pods-last-report-counts",
    ),
    pytest.param(
        [[rep(worker(0, uid="a"), -1, 0, 0)], [worker(1, uid="b")]], None, id="no-usable-report"
    ),
]


@pytest.mark.parametrize(("steps", "want"), ROWS)
def test_usage_sums_every_pod_the_job_had(
    steps: list[list[ObservedPod]], want: tuple[float, float, float] | None
) -> None:
    status: dict[str, Any] = {}
    for pods in steps:
        # Through the API's JSON each time, as an operator restart would read it back.
        status = compute_plan(
            observed(pods=[*pods, store()], status=status), NOW, CFG
        ).status.to_api()
    if want is None:
        assert "usage" not in status
        return
    usage = Usage.model_validate(status["usage"])
    assert (usage.gpu_seconds, usage.idle_gpu_seconds, usage.energy_joules) == want
    assert usage.gpu_hours == round(want[0] / 3600, 3)
    assert usage.energy_kwh == round(want[2] / 3.6e6, 4)
    assert status["usage"]["energyKWh"] == usage.energy_kwh  # the -o wide column's path


def test_usage_is_kept_once_the_job_finished_and_its_pods_are_gone() -> None:
    status = compute_plan(
        observed(pods=[w(0, "a", 3600, 0, 7.2e6), store()]), NOW, CFG
    ).status.to_api()
    status["phase"] = "Succeeded"
    after = compute_plan(observed(pods=[], status=status), NOW, CFG).status.to_api()
    assert after["usage"]["gpuHours"] == 1.0
    assert after["usage"]["energyKWh"] == 2.0
    assert after["usage"].get("pods", []) == []

"""Which jobs a node event wakes, as a table: the reconciler's bookkeeping, no API server."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tests.factories import node
from trainop.api.status import Phase, TrainingJobStatus
from trainop.core.config import OperatorConfig
from trainop.core.observe import NodeInfo
from trainop.core.plan import REASON_NO_CAPACITY
from trainop.reconcile import Reconciler

HELD = ("team-a", "held")  # waiting for a node big enough
ON_NODE = ("team-a", "running")  # has a pod on gpu-node-0
READY = node("gpu-node-0")


@pytest.mark.parametrize(
    ("before", "after", "woken"),
    [
        pytest.param(READY, READY, set(), id="heartbeat-wakes-nobody"),
        pytest.param(None, READY, {HELD, ON_NODE}, id="node-added"),
        pytest.param(READY, None, {HELD, ON_NODE}, id="node-deleted"),
        pytest.param(READY, replace(READY, ready=False), {HELD, ON_NODE}, id="not-ready"),
        pytest.param(READY, node("gpu-node-0", gpus=16), {HELD}, id="more-gpus"),
        pytest.param(READY, replace(READY, labels={"pool": "h100"}), {HELD}, id="relabelled"),
        pytest.param(replace(READY, unschedulable=True), READY, {HELD}, id="uncordoned"),
    ],
)
def test_a_node_change_wakes_held_jobs_and_a_readiness_change_its_own(
    before: NodeInfo | None, after: NodeInfo | None, woken: set[tuple[str, str]]
) -> None:
    rec = Reconciler(None, OperatorConfig())  # type: ignore[arg-type]  # no I/O here
    held = TrainingJobStatus(phase=Phase.PENDING, reason=REASON_NO_CAPACITY)
    rec._remember(HELD, held, [])
    rec._remember(ON_NODE, TrainingJobStatus(phase=Phase.RUNNING, reason="Running"), [])
    rec.jobs_on_node["gpu-node-0"] = {ON_NODE}
    assert rec.jobs_woken_by("gpu-node-0", before, after) == woken


def test_a_job_no_longer_held_is_not_woken_by_nodes() -> None:
    rec = Reconciler(None, OperatorConfig())  # type: ignore[arg-type]
    rec._remember(HELD, TrainingJobStatus(phase=Phase.PENDING, reason=REASON_NO_CAPACITY), [])
    rec._remember(HELD, TrainingJobStatus(phase=Phase.RUNNING, reason="Running"), [])
    assert rec.jobs_woken_by("gpu-node-9", None, node("gpu-node-9")) == set()

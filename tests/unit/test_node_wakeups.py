"""Which jobs a node event wakes, as a table: the reconciler's bookkeeping, no API server."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tests.factories import node
from trainop.api.status import Phase, TrainingJobStatus
from trainop.core.config import OperatorConfig
from trainop.core.observe import NodeInfo
from trainop.core.plan import REASON_NO_CAPACITY
from trainop.reconcile import NodeCache, Reconciler

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


def _recount(rec: Reconciler) -> tuple[dict[str, int], dict[str, set[tuple[str, str]]]]:
    phases: dict[str, int] = {}
    for phase in rec.phases.values():
        phases[phase] = phases.get(phase, 0) + 1
    return phases, {n: jobs for n, jobs in rec.jobs_on_node.items() if jobs}


A, B = ("team-a", "a"), ("team-b", "b")
RUNNING = TrainingJobStatus(phase=Phase.RUNNING, reason="Running")
PENDING = TrainingJobStatus(phase=Phase.PENDING, reason="Pending")
DONE = TrainingJobStatus(phase=Phase.SUCCEEDED, reason="Succeeded")


@pytest.mark.parametrize(
    ("steps", "phases", "placed"),
    [
        pytest.param(
            [(A, PENDING, []), (A, RUNNING, ["n1", "n2"])],
            {"Running": 1},
            {"n1": {A}, "n2": {A}},
            id="pending-then-running",
        ),
        pytest.param(
            [(A, RUNNING, ["n1"]), (B, RUNNING, ["n1"]), (A, RUNNING, ["n2"])],
            {"Running": 2},
            {"n1": {B}, "n2": {A}},
            id="a-pod-moved-node",
        ),
        pytest.param(
            [(A, RUNNING, ["n1"]), (B, PENDING, []), (A, None, [])],
            {"Pending": 1},
            {},
            id="forgotten-job-leaves-no-trace",
        ),
        pytest.param(
            [(A, RUNNING, ["n1"]), (A, DONE, []), (B, DONE, [])],
            {"Succeeded": 2},
            {},
            id="finished-jobs-hold-no-node",
        ),
    ],
)
def test_the_reconcilers_books_match_a_recount_after_any_sequence(
    steps: list[tuple[tuple[str, str], TrainingJobStatus | None, list[str]]],
    phases: dict[str, int],
    placed: dict[str, set[tuple[str, str]]],
) -> None:
    """Jobs per phase and jobs per node are kept as they change, not recounted on
    every reconcile (which made a burst of N jobs cost N^2): they must stay exact."""
    from trainop import operator_metrics as m
    from trainop.core.observe import ObservedPod

    rec = Reconciler(None, OperatorConfig())  # type: ignore[arg-type]
    for key, status, nodes in steps:
        if status is None:
            rec._forget(key)
            continue
        pods = [
            ObservedPod(f"w{i}", f"u{i}", "worker", i, 0, "Running", node_name=n)
            for i, n in enumerate(nodes)
        ]
        rec._remember(key, status, pods)
    assert _recount(rec) == (phases, placed)
    assert {k: v for k, v in rec.phase_counts.items() if v} == phases
    for phase in Phase:  # the exported gauge says the same
        assert m.JOBS.labels(phase.value)._value.get() == phases.get(phase.value, 0)


def test_the_node_view_is_unknown_until_the_start_up_list_not_after_one_watch_event() -> None:
    """A restarted operator's node watch replays nodes one by one. Taking the first
    replayed node for the whole cluster made every other node look deleted: the plan
    force-deleted the healthy pods there as lost (found by test_chaos in CI, from the
    API server's audit log: a fresh operator deleted 2 workers and the store of a job)."""
    nodes = NodeCache()
    nodes.update("ADDED", {"metadata": {"name": "gpu-node-0"}})
    assert nodes.snapshot() is None  # unknown: nothing is judged lost
    listed = [{"metadata": {"name": n}} for n in ("gpu-node-0", "gpu-node-1")]
    nodes.prime(listed)
    assert set(nodes.snapshot() or {}) == {"gpu-node-0", "gpu-node-1"}
    nodes.update("DELETED", {"metadata": {"name": "gpu-node-1"}})
    assert set(nodes.snapshot() or {}) == {"gpu-node-0"}  # now a missing node is a deleted one

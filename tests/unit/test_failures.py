"""Failure classification, in-place restart accounting and disruptions, as tables."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import pytest
from prometheus_client import REGISTRY

from tests.factories import NOW, failed, observed, spec, store, worker
from tests.unit.test_api import SCHEMA
from tests.unit.test_bad_input import FakeKube, settled
from tests.unit.test_bad_input import job as fake_job
from trainop.api import constants as c
from trainop.api.spec import Action, Reason
from trainop.api.status import LiveWorker, Phase
from trainop.core.config import OperatorConfig
from trainop.core.failures import classify, track_workers
from trainop.core.observe import ObservedPod, Termination
from trainop.core.plan import Plan, compute_plan
from trainop.reconcile import Reconciler
from trainop_runtime import contract as rc

CFG = OperatorConfig()
RUNNING = {"phase": "Running", "startTime": "2026-11-22T11:00:00Z"}
# What the kubelet writes when a pod outlives its activeDeadlineSeconds.
DEADLINE = "Pod was active on the node longer than the specified deadline"


T0 = NOW


def deleted_while_running(stopped: datetime, asked: datetime, code: int = 143) -> ObservedPod:
    """A worker whose delete was asked for at `asked` and whose trainer stopped at `stopped`."""
    term = Termination(code, "Error", "SIGTERM received; workers had 54 s to checkpoint", stopped)
    return worker(
        0,
        "Failed",
        trainer=term,
        deleting=True,
        delete_requested=asked,
        deletion_time=asked + timedelta(seconds=60),
    )


def plan_for(**kw: Any) -> Plan:
    return compute_plan(observed(**kw), NOW, CFG)


def again(plan: Plan, **kw: Any) -> Plan:
    """The next reconcile of the same observation, from the status the first one wrote."""
    return compute_plan(observed(status=plan.status.to_api(), **kw), NOW, CFG)


def deleted(plan: Plan) -> dict[str, int | None]:
    return {d.name: d.grace_seconds for d in plan.deletes}


def live(*marks: tuple[int, int]) -> list[dict[str, Any]]:
    """status.liveWorkers for (slot, reported restarts) pairs of the factory's pods."""
    return [{"pod": f"llm-worker-{s}", "podUID": f"pod-{s}", "restarts": n} for s, n in marks]


def reporting(slot: int, restarts: object, **kw: Any) -> ObservedPod:
    return worker(slot, progress={"step": 10, "restarts": restarts}, **kw)


@pytest.mark.parametrize(
    ("pod", "node_lost", "reason"),
    [
        pytest.param(failed(0, 1), False, Reason.ERROR, id="exit-code"),
        pytest.param(failed(0, 137, "OOMKilled"), False, Reason.OOM_KILLED, id="oom"),
        pytest.param(failed(0, 0, status_reason="Evicted"), False, Reason.EVICTED, id="kubelet"),
        pytest.param(
            failed(0, 143, disruption_reason="PreemptionByScheduler"),
            False,
            Reason.PREEMPTED,
            id="preempted-beats-sigterm-exit",
        ),
        pytest.param(
            worker(0, deleting=True, disruption_reason="EvictionByEvictionAPI"),
            False,
            Reason.EVICTED,
            id="eviction-api-while-running",
        ),
        pytest.param(
            failed(0, 143, disruption_reason="TerminationByKubelet"),
            False,
            Reason.EVICTED,
            id="kubelet-termination",
        ),
        pytest.param(
            failed(0, 143, disruption_reason="DeletionByTaintManager"),
            False,
            Reason.NODE_LOST,
            id="taint-manager",
        ),
        pytest.param(
            failed(0, 143, disruption_reason="DeletionByPodGC"),
            False,
            Reason.NODE_LOST,
            id="pod-gc",
        ),
        pytest.param(
            failed(0, 143, disruption_reason="SomeFutureReason"),
            False,
            Reason.PREEMPTED,
            id="unknown-disruption",
        ),
        pytest.param(worker(0), True, Reason.NODE_LOST, id="node-lost"),
        pytest.param(failed(0, 1, status_reason="NodeLost"), False, Reason.NODE_LOST, id="status"),
        pytest.param(
            failed(0, 137, status_reason="DeadlineExceeded", status_message=DEADLINE),
            False,
            Reason.DEADLINE_EXCEEDED,
            id="pod-active-deadline",
        ),
        pytest.param(
            failed(0, 137, status_reason="DeadlineExceeded"),
            False,
            Reason.DEADLINE_EXCEEDED,
            id="pod-active-deadline-no-message",
        ),
        # kubectl delete on a real kubelet: SIGTERM, checkpoint, exit 143, no DisruptionTarget.
        pytest.param(
            deleted_while_running(
                stopped=T0 + timedelta(seconds=31), asked=T0 + timedelta(seconds=30)
            ),
            False,
            Reason.DELETED,
            id="deleted-by-hand-stopped-after",
        ),
        pytest.param(
            deleted_while_running(
                stopped=T0 + timedelta(seconds=30), asked=T0 + timedelta(seconds=30)
            ),
            False,
            Reason.DELETED,
            id="deleted-by-hand-same-second",
        ),
        pytest.param(
            replace(failed(0, 1), deleting=True), False, Reason.ERROR, id="deleted-times-unknown"
        ),
        pytest.param(
            deleted_while_running(stopped=T0, asked=T0 + timedelta(seconds=30), code=1),
            False,
            Reason.ERROR,
            id="failed-then-deleted-keeps-its-failure",
        ),
        pytest.param(
            replace(
                deleted_while_running(
                    stopped=T0 + timedelta(seconds=31), asked=T0 + timedelta(seconds=30)
                ),
                disruption_reason="PreemptionByScheduler",
            ),
            False,
            Reason.PREEMPTED,
            id="disruption-beats-deletion",
        ),
    ],
)
def test_classify(pod: ObservedPod, node_lost: bool, reason: Reason) -> None:
    failure = classify(pod, node_lost=node_lost)
    assert failure.reason is reason
    assert failure.message  # always something to show in status.lastFailure
    if reason is Reason.DEADLINE_EXCEEDED:
        # The kubelet's word, not the trainer's log tail ("boom").
        assert failure.message == pod.status_message or "activeDeadlineSeconds" in failure.message


EARLIER, LATER = NOW - timedelta(minutes=10), NOW - timedelta(minutes=1)


def store_lost(**kw: Any) -> ObservedPod:
    """A worker whose launcher exited EXIT_RENDEZVOUS_LOST, started EARLIER."""
    return failed(0, rc.EXIT_RENDEZVOUS_LOST, created=EARLIER, **kw)


@pytest.mark.parametrize(
    ("the_store", "reason"),
    [
        pytest.param(None, Reason.RENDEZVOUS_LOST, id="store-gone"),
        pytest.param(store("Failed"), Reason.RENDEZVOUS_LOST, id="store-failed"),
        pytest.param(
            replace(store(), created=LATER), Reason.RENDEZVOUS_LOST, id="store-replaced-since"
        ),
        pytest.param(replace(store(), deleting=True), Reason.RENDEZVOUS_LOST, id="store-deleting"),
        # The store the worker started with is still up: its own problem, counted.
        pytest.param(replace(store(), created=EARLIER), Reason.ERROR, id="same-store-running"),
        # No creation times (the local runner once sent none): a running store cannot be
        # told apart from the one the worker knew, so it is counted, never a free loop.
        pytest.param(store(), Reason.ERROR, id="running-store-of-unknown-age"),
    ],
)
def test_a_lost_store_is_told_from_a_worker_that_cannot_reach_it(
    the_store: ObservedPod | None, reason: Reason
) -> None:
    assert classify(store_lost(), store=the_store).reason is reason


def test_one_store_loss_fails_every_worker_and_costs_no_budget() -> None:
    pods = [store_lost(), replace(store_lost(), name="llm-worker-1", uid="pod-1", slot=1)]
    plan = plan_for(pods=[*pods, replace(store(), created=LATER)], status=RUNNING)
    assert plan.status.restarts == 0
    assert [f.reason for f in plan.failures] == ["RendezvousLost"] * 2
    assert sorted(deleted(plan)) == ["llm-worker-0", "llm-worker-1"]  # both replaced


def test_a_store_no_worker_can_reach_spends_the_budget() -> None:
    pods = [store_lost(), replace(store_lost(), name="llm-worker-1", uid="pod-1", slot=1)]
    plan = plan_for(pods=[*pods, replace(store(), created=EARLIER)], status=RUNNING)
    assert plan.status.restarts == 2
    assert [f.counted for f in plan.failures] == [True, True]


@pytest.mark.parametrize(
    ("passes", "counted"),
    [
        pytest.param([{"llm-worker-0": 1}], 1, id="one-agent-restarted"),
        pytest.param([{"llm-worker-0": 1, "llm-worker-1": 2}], 3, id="each-agent-its-own"),
        pytest.param([{"llm-worker-0": 1}, {"llm-worker-0": 1}], 1, id="same-report-again"),
        pytest.param([{"llm-worker-0": 1}, {"llm-worker-0": 3}], 3, id="grows-across-passes"),
        pytest.param([{}], 0, id="no-report"),
    ],
)
def test_in_place_restarts_reach_the_restarts_metric_once(
    passes: list[dict[str, int]], counted: int
) -> None:
    kube = FakeKube(fake_job())
    rec = Reconciler(kube, CFG, clock=lambda: NOW)  # type: ignore[arg-type]
    labels = {"reason": "InPlace", "counted": "true"}
    asyncio.run(settled(rec, ("team-a", "llm")))  # creates the pods
    before = REGISTRY.get_sample_value("trainop_operator_restarts_total", labels) or 0.0
    for reports in passes:
        for pod in kube.objects:
            n = reports.get(pod["metadata"]["name"])
            if n is not None:
                progress = json.dumps({"step": 5, "restarts": n})
                pod["metadata"]["annotations"] = {c.ANNOTATION_PROGRESS: progress}
        asyncio.run(settled(rec, ("team-a", "llm")))
    after = REGISTRY.get_sample_value("trainop_operator_restarts_total", labels) or 0.0
    assert after - before == counted
    assert kube.job["status"].get("inPlaceRestarts", 0) == counted


@pytest.mark.parametrize(
    ("path", "enum"),
    [
        pytest.param(("failurePolicy", "rules", "reasons"), Reason, id="rule-reasons"),
        pytest.param(("failurePolicy", "rules", "action"), Action, id="rule-actions"),
    ],
)
def test_the_crd_allows_exactly_the_failure_classes_of_the_model(
    path: tuple[str, ...], enum: type[StrEnum]
) -> None:
    node = SCHEMA["properties"]["spec"]
    for key in path:
        node = node["properties"][key]
        if node.get("type") == "array":
            node = node["items"]
    assert set(node["enum"]) == {member.value for member in enum}


@pytest.mark.parametrize(
    ("known", "pods", "written_off", "new", "marks", "gone"),
    [
        pytest.param([], [reporting(0, 2)], [], {"llm-worker-0": 2}, {"pod-0": 2}, [], id="new"),
        pytest.param(
            [LiveWorker(pod="llm-worker-0", pod_uid="pod-0", restarts=2)],
            [reporting(0, 3)],
            [],
            {"llm-worker-0": 1},
            {"pod-0": 3},
            [],
            id="delta-only",
        ),
        pytest.param(
            [LiveWorker(pod="llm-worker-0", pod_uid="pod-0", restarts=3)],
            [reporting(0, 1)],
            [],
            {},
            {"pod-0": 3},
            [],
            id="lower-report-never-lowers",
        ),
        pytest.param(
            [LiveWorker(pod="llm-worker-0", pod_uid="pod-0", restarts=3)],
            [reporting(0, 0, uid="pod-0b")],
            [],
            {},
            {"pod-0b": 0},
            ["pod-0"],
            id="replacement-starts-at-zero",
        ),
        pytest.param(
            [], [reporting(0, 4, deleting=True)], [], {}, {}, [], id="first-seen-deleting"
        ),
        pytest.param([], [reporting(0, 4)], ["pod-0"], {}, {}, [], id="written-off"),
        pytest.param([], [reporting(0, True)], [], {}, {"pod-0": 0}, [], id="bool-is-no-count"),
        pytest.param([], [store()], [], {}, {}, [], id="store-not-a-worker"),
        pytest.param(
            [],
            [reporting(1, 0), reporting(0, 0)],
            [],
            {},
            {"pod-0": 0, "pod-1": 0},
            [],
            id="list-order-does-not-matter",
        ),
    ],
)
def test_track_workers(
    known: list[LiveWorker],
    pods: list[ObservedPod],
    written_off: list[str],
    new: dict[str, int],
    marks: dict[str, int],
    gone: list[str],
) -> None:
    tracked = track_workers(known, pods, written_off)
    assert tracked.new_restarts == new
    assert [(w.pod_uid, w.restarts) for w in tracked.live] == sorted(marks.items())
    assert [w.pod_uid for w in tracked.gone] == gone


@pytest.mark.parametrize(
    ("limit", "restarts", "marks", "pods", "total", "phase"),
    [
        pytest.param(
            6, 1, [], [reporting(0, 2), worker(1)], 3, Phase.RUNNING, id="folded-into-budget"
        ),
        pytest.param(
            6,
            1,
            [],
            [reporting(0, 1), reporting(1, 2)],
            4,
            Phase.RUNNING,
            id="each-agent-counts-its-own",
        ),
        pytest.param(
            6,
            4,
            live((0, 3)),
            [reporting(0, 0, uid="pod-0b"), worker(1)],
            4,
            Phase.RUNNING,
            id="replacement-never-lowers",
        ),
        pytest.param(3, 1, [], [reporting(0, 2), worker(1)], 3, Phase.RUNNING, id="at-the-limit"),
        pytest.param(
            2, 1, [], [reporting(0, 2), worker(1)], 3, Phase.FAILED, id="over-the-limit-fails"
        ),
    ],
)
def test_in_place_restarts_spend_the_one_budget(
    limit: int,
    restarts: int,
    marks: list[dict[str, Any]],
    pods: list[ObservedPod],
    total: int,
    phase: Phase,
) -> None:
    the_spec = spec(failurePolicy={"backoffLimit": limit})
    status = {**RUNNING, "restarts": restarts, "liveWorkers": marks}
    plan = plan_for(pods=[store(), *pods], the_spec=the_spec, status=status)
    assert plan.status.restarts == total
    assert plan.status.restarts_summary == f"{total}/{limit}"
    assert plan.status.phase is phase
    if total > restarts:
        assert plan.status.restarts_by_reason["InPlace"] == total - restarts
        assert any(e.reason == "InPlaceRestart" for e in plan.events)
    if phase is Phase.FAILED:
        assert plan.status.reason == "BackoffLimitExceeded"
        assert {"llm-worker-0", "llm-worker-1", "llm-rdzv"} <= set(deleted(plan))
    else:
        # Seen again, the same reports count nothing more: idempotent across reconciles.
        second = again(plan, pods=[store(), *pods], the_spec=the_spec)
        assert second.status.restarts == total
        assert not any(e.reason == "InPlaceRestart" for e in second.events)


def test_pod_replacement_backoff_ignores_in_place_restarts() -> None:
    the_spec = spec(failurePolicy={"backoffSeconds": 10, "maxBackoffSeconds": 300})
    status = {**RUNNING, "restarts": 5, "inPlaceRestarts": 5}
    plan = plan_for(pods=[store(), failed(0), worker(1)], the_spec=the_spec, status=status)
    # The first pod replacement waits the first backoff step, not the sixth.
    assert plan.status.retry_after == NOW + timedelta(seconds=10)
    assert plan.status.restarts == 6


@pytest.mark.parametrize(
    ("victim", "rules", "reason", "counted", "grace"),
    [
        pytest.param(
            worker(0, deleting=True, disruption_reason="EvictionByEvictionAPI"),
            [],
            "Evicted",
            False,
            None,  # still terminating: it keeps its grace period to checkpoint
            id="evicted-while-running",
        ),
        pytest.param(
            failed(0, 143, deleting=True, disruption_reason="PreemptionByScheduler"),
            [],
            "Preempted",
            False,
            0,
            id="preempted-and-dead",
        ),
        pytest.param(
            failed(0, 143, deleting=True, disruption_reason="PreemptionByScheduler"),
            [{"action": "RestartPod", "reasons": ["Preempted"]}],
            "Preempted",
            True,
            0,
            id="rule-counts-preemption",
        ),
        pytest.param(
            worker(0, deleting=True, disruption_reason="DeletionByTaintManager"),
            [],
            "NodeLost",
            False,
            None,
            id="taint-manager",
        ),
    ],
)
def test_disrupted_pods_are_recorded_once_while_deleting(
    victim: ObservedPod, rules: list[Any], reason: str, counted: bool, grace: int | None
) -> None:
    the_spec = spec(failurePolicy={"rules": rules})
    pods = [store(), victim, worker(1)]
    plan = plan_for(pods=pods, the_spec=the_spec, status={**RUNNING, "liveWorkers": live((0, 0))})
    lf = plan.status.last_failure
    assert lf is not None
    assert (lf.pod, lf.reason, lf.counted) == ("llm-worker-0", reason, counted)
    assert plan.status.restarts == (1 if counted else 0)
    assert deleted(plan).get("llm-worker-0", None) == grace
    assert sum(e.reason == "WorkerFailed" for e in plan.events) == 1
    second = again(plan, pods=pods, the_spec=the_spec)
    assert second.status.restarts == plan.status.restarts
    assert not any(e.reason == "WorkerFailed" for e in second.events)
    # Once it is gone, it is not reported a second time as deleted by hand.
    gone = again(second, pods=[store(), worker(1)], the_spec=the_spec)
    assert not any(e.reason == "WorkerFailed" for e in gone.events)
    assert gone.status.last_failure == lf


@pytest.mark.parametrize(
    ("marks", "pods", "recorded"),
    [
        pytest.param(live((0, 0), (1, 0)), [worker(1)], True, id="vanished"),
        pytest.param(
            live((0, 0), (1, 0)), [worker(0, deleting=True), worker(1)], False, id="still-deleting"
        ),
        pytest.param([], [worker(1)], False, id="never-seen-alive"),
    ],
)
def test_worker_deleted_by_hand_is_recorded(
    marks: list[dict[str, Any]], pods: list[ObservedPod], recorded: bool
) -> None:
    plan = plan_for(pods=[store(), *pods], status={**RUNNING, "liveWorkers": marks})
    lf = plan.status.last_failure
    if not recorded:
        assert lf is None
        return
    assert lf is not None
    assert (lf.pod, lf.pod_uid, lf.reason, lf.action, lf.counted) == (
        "llm-worker-0",
        "pod-0",
        "Deleted",
        "Ignore",
        False,
    )
    assert any(e.reason == "WorkerFailed" and "llm-worker-0" in e.message for e in plan.events)
    assert "pod-0" not in {w.pod_uid for w in plan.status.live_workers}
    assert "llm-worker-0" in [o["metadata"]["name"] for o in plan.creates]


@pytest.mark.parametrize(
    ("pods", "the_spec"),
    [
        pytest.param(
            [store(), worker(0), worker(1), worker(2)], spec(replicas=2), id="scaled-down"
        ),
        pytest.param([store(), failed(0), worker(1)], spec(), id="failed-and-replaced"),
        pytest.param([store(), worker(0), worker(1)], spec(suspend=True), id="suspended"),
    ],
)
def test_pods_the_operator_deletes_are_never_reported_deleted_by_hand(
    pods: list[ObservedPod], the_spec: Any
) -> None:
    first = plan_for(pods=pods, the_spec=the_spec, status=RUNNING)
    assert first.deletes
    # The operator's deletes took effect: those pods are gone.
    left = [p for p in pods if p.name not in deleted(first)]
    later = again(first, pods=left, the_spec=the_spec)
    lf = later.status.last_failure
    assert lf is None or lf.reason != "Deleted", lf


@pytest.mark.parametrize(
    ("marks", "recorded"),
    [
        pytest.param(live((0, 0)), True, id="followed-so-not-ours"),
        pytest.param([], False, id="unknown-so-ours"),
    ],
)
def test_failed_pod_already_deleting_counts_unless_the_operator_deleted_it(
    marks: list[dict[str, Any]], recorded: bool
) -> None:
    pods = [store(), failed(0, 1, deleting=True), worker(1)]
    plan = plan_for(pods=pods, status={**RUNNING, "liveWorkers": marks})
    assert plan.status.restarts == (1 if recorded else 0)
    lf = plan.status.last_failure
    assert (lf.reason if lf else None) == ("Error" if recorded else None)

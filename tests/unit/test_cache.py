"""The operator's watch cache (kube/cache.py) and the reconciler reading from it, against
a fake API server: the newest version wins whatever the order events come in, and with
a primed cache a reconcile reads nothing from the API, yet sees its own writes at once
(no double create, no stale status) before any watch event arrives."""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

import pytest

from tests.factories import NOW
from tests.unit.test_bad_input import CFG, FakeKube, job, settled
from trainop.kube.cache import ObjectCache
from trainop.reconcile import Reconciler

KEY = ("team-a", "llm")


def pod(
    name: str, rv: int, uid: str | None = None, spec: dict[str, Any] | None = None, **meta: Any
) -> dict[str, Any]:
    return {
        "kind": "Pod",
        "spec": spec or {},
        "metadata": {
            "name": name,
            "namespace": "team-a",
            "uid": uid or f"uid-{name}",
            "resourceVersion": str(rv),
            "labels": {"trainop.dev/job-name": "llm"},
            "managedFields": [{"manager": "kubelet"}] * 50,
            **meta,
        },
        "status": {"phase": f"v{rv}"},
    }


@pytest.mark.parametrize(
    ("events", "phase"),
    [
        pytest.param([("put", 5), ("put", 7)], "v7", id="in-order"),
        pytest.param([("put", 7), ("put", 5)], "v7", id="replayed-older-listing-loses"),
        pytest.param([("put", 5), ("del", 7)], None, id="deleted"),
        pytest.param([("put", 7), ("del", 5)], "v7", id="stale-delete-ignored"),
        pytest.param([("put", 5), ("del", 6), ("put", 5)], "v5", id="relisted-after-delete"),
    ],
)
def test_the_newest_version_of_a_pod_wins_in_any_order(
    events: list[tuple[str, int]], phase: str | None
) -> None:
    cache = ObjectCache()
    for what, rv in events:
        cache.put_pod(pod("llm-worker-0", rv), deleted=what == "del")
    held = cache.job_pods(*KEY)
    assert [p.pod.phase for p in held] == ([phase] if phase else [])


def test_pods_without_the_job_label_are_not_held() -> None:
    cache = ObjectCache()
    stray = pod("other", 1)
    stray["metadata"]["labels"] = {}
    cache.put_pod(stray)
    assert cache.pods == {}


class ApiServer(FakeKube):
    """FakeKube that answers writes as the API server does (the object, a new
    resourceVersion) and counts the reads a cache should make unnecessary."""

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__(body)
        self.job["kind"] = "TrainingJob"
        self.job["metadata"]["resourceVersion"] = "1"
        self.rv = 1
        self.reads = 0

    def _next(self) -> str:
        self.rv += 1
        return str(self.rv)

    async def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.reads += 1
        return await super().get_job(namespace, name)

    async def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        self.reads += 1
        return await super().list_pods(namespace, selector)

    async def get_service(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.reads += 1
        return await super().get_service(namespace, name)

    async def create(self, obj: dict[str, Any], *, dry_run: bool = False) -> Any:
        before = len(self.objects)
        await super().create(obj, dry_run=dry_run)
        if dry_run or len(self.objects) == before:
            return None
        stored = self.objects[-1]
        stored["metadata"]["resourceVersion"] = self._next()
        stored["metadata"]["uid"] += f"-{self.rv}"  # a new object, a new uid
        return copy.deepcopy(stored)

    async def replace_job_status(self, body: dict[str, Any], status: dict[str, Any]) -> Any:
        if body["metadata"]["resourceVersion"] != self.job["metadata"]["resourceVersion"]:
            raise AssertionError("a status write from a stale job would be a 409")
        self.job["status"] = status
        self.job["metadata"]["resourceVersion"] = self._next()
        return copy.deepcopy(self.job)


def test_a_primed_cache_serves_every_read_and_sees_the_reconcilers_own_writes() -> None:
    api = ApiServer(job())
    cache = ObjectCache()
    cache.prime([copy.deepcopy(api.job)], [], [])
    rec = Reconciler(api, CFG, clock=lambda: NOW, cache=cache)  # type: ignore[arg-type]

    async def passes(n: int) -> None:
        for _ in range(n):  # woken again and again, no watch event in between
            await settled(rec, KEY)

    asyncio.run(passes(3))
    assert api.reads == 0
    names = sorted(o["metadata"]["name"] for o in api.objects if o["kind"] == "Pod")
    assert names == ["llm-rdzv", "llm-worker-0", "llm-worker-1"]  # each created once
    assert api.refused == []
    # The cache holds what the API server answered: the job at its latest version.
    assert cache.job(*KEY)["metadata"]["resourceVersion"] == api.job["metadata"]["resourceVersion"]


def test_an_unprimed_cache_is_never_read() -> None:
    api = ApiServer(job())
    rec = Reconciler(api, CFG, clock=lambda: NOW, cache=ObjectCache())  # type: ignore[arg-type]
    asyncio.run(settled(rec, KEY))
    assert api.reads >= 3  # job, pods and Service from the API server


def _as_scheduled(body: dict[str, Any], **status: Any) -> dict[str, Any]:
    """A pod the operator built, as the API server and kubelet hand it back later."""
    full = copy.deepcopy(body)
    full["metadata"].update(
        uid="uid-w0",
        resourceVersion="9",
        creationTimestamp="2026-11-22T11:59:00Z",
        managedFields=[{"manager": "kubelet", "fieldsV1": {"f:status": {}}}] * 8,
    )
    full["spec"]["nodeName"] = "gpu-node-3"
    full["status"] = status
    return full


TERMINATED = {
    "phase": "Failed",
    "conditions": [
        {"type": "Ready", "status": "False"},
        {"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"},
    ],
    "containerStatuses": [
        {
            "name": "trainer",
            "state": {
                "terminated": {
                    "exitCode": 137,
                    "reason": "OOMKilled",
                    "message": "rank 3 ran out of memory",
                    "finishedAt": "2026-11-22T12:00:00Z",
                }
            },
        }
    ],
}


@pytest.mark.parametrize(
    ("status", "meta"),
    [
        pytest.param({"phase": "Pending"}, {}, id="pending"),
        pytest.param(
            {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
            {"annotations": {"trainop.dev/progress": '{"step": 41}'}},
            id="running-with-progress",
        ),
        pytest.param(TERMINATED, {}, id="failed-oom-preempted"),
        pytest.param(
            {"phase": "Running"},
            {"deletionTimestamp": "2026-11-22T12:00:30Z", "deletionGracePeriodSeconds": 30},
            id="being-deleted",
        ),
    ],
)
def test_a_cached_pod_is_what_the_reconcile_reads_and_its_owner_nothing_more(
    status: dict[str, Any], meta: dict[str, Any]
) -> None:
    """The cache holds a pod parsed once (core/observe.parse_pod) with its owners' uids:
    the reconcile decides on exactly what it would from the full pod."""
    from tests.factories import JOB, spec
    from trainop.core.build import build_worker_pod
    from trainop.core.config import OperatorConfig
    from trainop.core.observe import parse_pod

    full = _as_scheduled(build_worker_pod(JOB, spec(), 0, 0, OperatorConfig()), **status)
    full["metadata"].update(meta)
    cache = ObjectCache()
    cache.put_pod(full)
    (held,) = cache.job_pods(JOB.namespace, JOB.name)
    assert held.pod == parse_pod(full)
    assert held.owners == (JOB.uid,)
    assert held.version == 9


def test_our_accepted_delete_shows_at_once_and_a_late_event_does_not_undo_it() -> None:
    cache = ObjectCache()
    running = pod("llm-worker-0", 5, spec={"nodeName": "gpu-node-0"})
    cache.put_pod(running)
    assert cache.pod_deleted("team-a", "llm", "uid-llm-worker-0", NOW) is False  # graceful
    (held,) = cache.job_pods(*KEY)
    assert held.pod.deleting
    assert held.pod.deletion_time == NOW
    for replayed in (4, 5):  # an older event, or the same version listed again
        cache.put_pod(pod("llm-worker-0", replayed, spec={"nodeName": "gpu-node-0"}))
        assert cache.job_pods(*KEY)[0].pod.deleting
    cache.put_pod(pod("llm-worker-0", 6), deleted=True)
    assert cache.job_pods(*KEY) == []


@pytest.mark.parametrize(
    ("phase", "node"),
    [
        pytest.param("Failed", "gpu-node-0", id="failed"),
        pytest.param("Succeeded", "gpu-node-0", id="succeeded"),
        pytest.param("Pending", None, id="never-scheduled"),
    ],
)
def test_a_pod_the_api_server_removes_at_once_frees_its_name_at_once(
    phase: str, node: str | None
) -> None:
    """Finished or unscheduled pods have no grace period: deleted means gone, so the
    replacement (same name) can be created without waiting for the watch."""
    cache = ObjectCache()
    body = pod("llm-worker-0", 5, spec={"nodeName": node} if node else {})
    body["status"] = {"phase": phase}
    cache.put_pod(body)
    assert cache.pod_deleted("team-a", "llm", "uid-llm-worker-0", NOW) is True
    assert cache.job_pods(*KEY) == []
    cache.put_pod(body)  # the watch's late event of the pod as it was
    assert cache.job_pods(*KEY) == []
    cache.put_pod(pod("llm-worker-0", 6), deleted=True)  # the watch catches up
    assert cache.job_pods(*KEY) == []
    assert cache.pods == {}


def test_kubectls_copy_of_the_spec_is_not_held_for_a_job() -> None:
    body = job()
    body["metadata"]["annotations"] = {
        "kubectl.kubernetes.io/last-applied-configuration": json.dumps(body["spec"]),
        "team": "vision",
    }
    cache = ObjectCache()
    cache.put_job(body)
    held = cache.job(body["metadata"]["namespace"], body["metadata"]["name"])
    assert held is not None
    assert held["metadata"]["annotations"] == {"team": "vision"}
    assert held["spec"] == body["spec"]


def test_a_failed_worker_is_replaced_without_waiting_for_the_watch() -> None:
    api = ApiServer(job())
    cache = ObjectCache()
    cache.prime([copy.deepcopy(api.job)], [], [])
    rec = Reconciler(api, CFG, clock=lambda: NOW, cache=cache)  # type: ignore[arg-type]
    created: list[str] = []
    create = api.create

    async def counting_create(obj: dict[str, Any], *, dry_run: bool = False) -> Any:
        if not dry_run:
            created.append(obj["metadata"]["name"])
        return await create(obj, dry_run=dry_run)

    api.create = counting_create  # type: ignore[method-assign]

    async def scenario() -> float | None:
        await settled(rec, KEY)
        (w0,) = [o for o in api.objects if o["metadata"]["name"] == "llm-worker-0"]
        failed = copy.deepcopy(w0)
        failed["metadata"]["resourceVersion"] = "1000"
        failed["spec"]["nodeName"] = "gpu-node-0"
        failed["status"] = TERMINATED
        cache.put_pod(failed)  # the one watch event: the worker failed
        # Counted, deleted (gone at once: it had finished), and replaced by the same
        # reconcile, with no watch event in between; asked to look again at once.
        again = await settled(rec, KEY)
        assert again == 0.0
        assert created.count("llm-worker-0") == 2, " ".join(created)
        return await settled(rec, KEY)

    asyncio.run(scenario())
    assert created.count("llm-worker-0") == 2, " ".join(created)  # and no third
    assert api.job["status"]["restarts"] == 1

"""The operator's watch cache (kube/cache.py) and the reconciler reading from it, against
a fake API server: the newest version wins whatever the order events come in, and with
a primed cache a reconcile reads nothing from the API, yet sees its own writes at once
(no double create, no stale status) before any watch event arrives."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest

from tests.factories import NOW
from tests.unit.test_bad_input import CFG, FakeKube, job
from trainop.kube.cache import ObjectCache
from trainop.reconcile import Reconciler

KEY = ("team-a", "llm")


def pod(name: str, rv: int, uid: str | None = None, **meta: Any) -> dict[str, Any]:
    return {
        "kind": "Pod",
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
    assert [p["status"]["phase"] for p in held] == ([phase] if phase else [])
    assert all("managedFields" not in p["metadata"] for p in held)  # what costs memory


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
            await rec.reconcile(KEY)

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
    asyncio.run(rec.reconcile(KEY))
    assert api.reads >= 3  # job, pods and Service from the API server

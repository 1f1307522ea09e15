"""Kopf handlers. Short on purpose: each one maps an event to the job it concerns
and enqueues it; the single idempotent reconcile does the rest.

Only `on.event` handlers are used: Kopf then keeps no per-object state (no
annotations, no status.kopf), and every event, including the initial listing
after an operator restart, converges through the same reconcile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import kopf

from trainop.api import constants as c
from trainop.core.config import OperatorConfig
from trainop.core.podsecurity import Level
from trainop.kube.cache import ObjectCache
from trainop.kube.client import Kube, KubeError, ObjDict
from trainop.reconcile import Key, NodeCache, Reconciler
from trainop.workqueue import WorkQueue

log = logging.getLogger("trainop.operator")
PRIME_MAX_PAUSE_SECONDS = 30.0
_T = TypeVar("_T")


def config_from_env() -> OperatorConfig:
    defaults = OperatorConfig()
    return OperatorConfig(
        exporter_image=os.environ.get("TRAINOP_EXPORTER_IMAGE", defaults.exporter_image),
        node_lost_seconds=float(
            os.environ.get("TRAINOP_NODE_LOST_SECONDS", defaults.node_lost_seconds)
        ),
        resync_seconds=float(os.environ.get("TRAINOP_RESYNC_SECONDS", defaults.resync_seconds)),
        pending_timeout_seconds=float(
            os.environ.get("TRAINOP_PENDING_TIMEOUT_SECONDS", defaults.pending_timeout_seconds)
        ),
        capacity_check=os.environ.get("TRAINOP_CAPACITY_CHECK", "true").lower() != "false",
        write_concurrency=int(
            os.environ.get("TRAINOP_WRITE_CONCURRENCY", defaults.write_concurrency)
        ),
        write_lanes=int(os.environ.get("TRAINOP_WRITE_LANES", defaults.write_lanes)),
        pod_security=Level(os.environ.get("TRAINOP_POD_SECURITY", defaults.pod_security)),
        pod_security_namespaces=parse_levels(os.environ.get("TRAINOP_POD_SECURITY_NAMESPACES", "")),
        network_policy=os.environ.get("TRAINOP_NETWORK_POLICY", "true").lower() != "false",
        metrics_namespace=os.environ.get("TRAINOP_METRICS_NAMESPACE", ""),
    )


def parse_levels(text: str) -> dict[str, Level]:
    """'ns-a=privileged,ns-b=restricted' (what the chart renders) -> {ns: Level}.
    A bad entry stops the operator at start: a typo must not silently mean baseline."""
    out: dict[str, Level] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        namespace, _, level = item.partition("=")
        out[namespace.strip()] = Level(level.strip())
    return out


class NoDiffBase(kopf.DiffBaseStorage):
    """Kopf diffs each object's last-handled essence against the new one on every watch
    event, deep-copying every pod, Service and job body to do so: most of its CPU under
    load (measured with py-spy: 36-43% of the operator's busy samples). Only on-change
    handlers read that diff, and trainop has on-event handlers only."""

    def build(
        self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None
    ) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # Kopf would post Events for its log records through its own client, past the
    # leader fence; the operator's own Events (through the fenced client) say what matters.
    settings.posting.enabled = False
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.watching.server_timeout = 300
    settings.networking.request_timeout = 60
    config = config_from_env()
    kube = await Kube.connect(
        os.environ.get("KUBECONFIG"), user_agent=memo.get("user_agent"), fence=memo.get("fence")
    )
    cache = None
    if os.environ.get("TRAINOP_WATCH_CACHE", "true").lower() != "false":
        cache = ObjectCache()
        await _prime(kube, cache, memo.get("namespaces") or [])
    reconciler = Reconciler(kube, config, cache=cache)
    await _prime_nodes(kube, reconciler.nodes)
    memo.kube = kube
    memo.cache = cache
    memo.reconciler = reconciler
    memo.queue = WorkQueue[Key](reconciler.reconcile)
    memo.resync = asyncio.create_task(_resync(memo.queue, reconciler, config.resync_seconds))


async def _prime(kube: Kube, cache: ObjectCache, namespaces: list[str]) -> None:
    """One LIST per resource (per watched namespace) before Kopf's watches start, so the
    first reconciles read a complete cache (controller-runtime's WaitForCacheSync)."""
    selector = c.LABEL_JOB

    async def list_all() -> tuple[list[ObjDict], list[ObjDict], list[ObjDict]]:
        jobs, pods, services = [], [], []
        scopes: list[str | None] = [*namespaces] or [None]  # None: every namespace
        for ns in scopes:
            jobs += await kube.list_jobs(ns)
            pods += await kube.list_labelled("pods", selector, ns)
            services += await kube.list_labelled("services", selector, ns)
        return jobs, pods, services

    jobs, pods, services = await _until_listed("watch cache", list_all)
    for job in jobs:
        job.setdefault("kind", c.KIND)
    cache.prime(jobs, pods, services)


async def _prime_nodes(kube: Kube, nodes: NodeCache) -> None:
    """Every node before the first reconcile: a plan that saw only the nodes the watch
    had replayed so far took the others for deleted and force-deleted their pods as
    lost. Without the right to list nodes, node loss and capacity are never judged
    (the view stays unknown), and the operator says so."""

    async def list_all() -> list[ObjDict] | None:
        try:
            listed = await kube.request("list", "/api/v1/nodes", resource="nodes")
        except KubeError as exc:
            if exc.status == 403:  # a right the operator can do without
                return None
            raise
        return list(listed.get("items") or [])

    items = await _until_listed("nodes", list_all)
    if items is None:
        log.warning("cannot list nodes: lost nodes and capacity go unjudged")
        return
    nodes.prime(items)


async def _until_listed(what: str, list_all: Callable[[], Awaitable[_T]]) -> _T:
    """Nothing is reconciled until the start-up lists succeed: a busy or unready API
    server is tried again with a growing pause (each request already rides out 429s)."""
    pause = 1.0
    while True:
        try:
            return await list_all()
        except (KubeError, OSError) as exc:
            log.warning("%s not listed (%s); trying again in %.0fs", what, exc, pause)
        await asyncio.sleep(pause)
        pause = min(pause * 2, PRIME_MAX_PAUSE_SECONDS)


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    memo.resync.cancel()
    await memo.queue.close()
    reconciler: Reconciler = memo.reconciler
    with contextlib.suppress(TimeoutError):  # an API server that does not answer
        await asyncio.wait_for(reconciler.drain_events(), timeout=5)
    await memo.kube.close()


@kopf.on.event(c.GROUP, c.VERSION, c.PLURAL)
async def job_event(
    type: str, name: str, body: kopf.Body, namespace: str | None, memo: kopf.Memo, **_: Any
) -> None:
    if namespace is None:
        return
    cache: ObjectCache | None = memo.cache
    if type == "DELETED":
        if cache is not None:
            cache.drop_job(namespace, name)
        memo.queue.forget((namespace, name))
        return
    if cache is not None:
        cache.put_job(body)
    memo.queue.add((namespace, name))


@kopf.on.event("v1", "pods", labels={c.LABEL_JOB: kopf.PRESENT})
@kopf.on.event("v1", "services", labels={c.LABEL_JOB: kopf.PRESENT})
async def child_event(
    type: str,
    body: kopf.Body,
    labels: kopf.Labels,
    namespace: str | None,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    """A job's pod or Service changed (a Service deleted by hand is recreated)."""
    if namespace is None:
        return
    if memo.cache is not None:
        memo.cache.put_child(body, deleted=type == "DELETED")
    memo.queue.add((namespace, labels[c.LABEL_JOB]))


@kopf.on.event(c.KUEUE_GROUP, "v1beta2", "workloads", labels={c.LABEL_JOB: kopf.PRESENT})
async def workload_event(
    labels: kopf.Labels, namespace: str | None, memo: kopf.Memo, **_: Any
) -> None:
    """Kueue admitted, evicted or changed a job's Workload. Served only where Kueue's
    CRDs are installed (Kopf notices them come and go)."""
    if namespace is not None:
        memo.queue.add((namespace, labels[c.LABEL_JOB]))


@kopf.on.event("v1", "namespaces")
async def namespace_event(type: str, name: str, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    reconciler: Reconciler = memo.reconciler
    reconciler.namespace_changed(
        name,
        gone=type == "DELETED",
        deleting=bool(body.get("metadata", {}).get("deletionTimestamp")),
    )


@kopf.on.event("v1", "nodes")
async def node_event(type: str, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    reconciler: Reconciler = memo.reconciler
    before = reconciler.nodes.update(type or "ADDED", dict(body))
    name = body.get("metadata", {}).get("name", "")
    for key in reconciler.jobs_woken_by(name, before, reconciler.nodes.nodes.get(name)):
        memo.queue.add(key)


async def _resync(queue: WorkQueue[Key], reconciler: Reconciler, every: float) -> None:
    """Level-triggered safety net: every known job is looked at once per period, events
    or not. Paced evenly over the period, never all at once: a burst of plans would hold
    the event loop and make the watch events that arrive meanwhile wait for it."""
    while True:
        cache = reconciler.cache
        # From the cache a pass reads no API: it only re-runs the plan (and writes if
        # time alone changed something the plan did not already ask to be woken for).
        keys = set(cache.jobs) if cache is not None and cache.primed else set()
        keys |= set(reconciler.phases)
        if not keys:
            await asyncio.sleep(every)
            continue
        gap = every / len(keys)
        for key in sorted(keys):
            await asyncio.sleep(gap)
            queue.add(key)

"""The one place that joins the pure core and the Kubernetes adapter:
observe -> decide (core.compute_plan) -> act -> write status once -> emit events."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import ValidationError

from trainop import operator_metrics as m
from trainop.api import constants as c
from trainop.api.parse import parse_spec
from trainop.api.status import Phase, TrainingJobStatus
from trainop.core.build import JobRef
from trainop.core.config import OperatorConfig
from trainop.core.observe import NodeInfo, ObservedPod, parse_node, parse_pod
from trainop.core.plan import (
    COND_QUEUE_ADMITTED,
    IN_PLACE,
    REASON_NO_CAPACITY,
    Event,
    Observed,
    Plan,
    PodDelete,
    compute_plan,
    planning_failed,
)
from trainop.kube.addons import AddOns
from trainop.kube.cache import ObjectCache
from trainop.kube.client import Fenced, Kube, KubeError

log = logging.getLogger("trainop.reconcile")
ObjDict = dict[str, Any]
Key = tuple[str, str]  # (namespace, name)
T = TypeVar("T")
# Backoff between tries of a create the API server refused (e.g. over quota).
REFUSED_BASE_SECONDS = 5.0
REFUSED_MAX_SECONDS = 300.0
# A namespace being deleted is gone within seconds to minutes; one recreated under the
# same name afterwards is served again once this has passed.
TERMINATING_MEMORY_SECONDS = 60.0
# How long a dry run's admission of an object shape is trusted: long enough for a burst
# of identical jobs, short enough that a new quota or policy is met within seconds.
ADMITTED_MEMORY_SECONDS = 10.0
ADMITTED_MEMORY_MAX = 4096
# Events posted at once (the rest wait in the background, see Reconciler._emit).
EVENT_CONCURRENCY = 4


def utcnow() -> datetime:
    # metav1.Time has second precision; sub-second times would make every status "changed".
    return datetime.now(UTC).replace(microsecond=0)


@dataclass
class NodeCache:
    """Nodes as listed at start-up, then kept by the operator's node watch.

    None (unknown) until the start-up LIST filled it: a node missing from a partial view
    is a deleted node to the plan, whose pods are force-deleted as lost. When the watch
    alone filled it, a restarted operator reconciling jobs while the watch was still
    replaying its first nodes deleted healthy pods on the nodes not replayed yet."""

    nodes: dict[str, NodeInfo] = field(default_factory=dict)
    synced: bool = False

    def prime(self, objs: list[ObjDict]) -> None:
        """Every node, from one LIST: from here on a missing node is a deleted one."""
        self.nodes = {node.name: node for node in map(parse_node, objs)}
        self.synced = True

    def update(self, event_type: str, obj: ObjDict) -> NodeInfo | None:
        node = parse_node(obj)
        before = self.nodes.get(node.name)
        if event_type == "DELETED":
            self.nodes.pop(node.name, None)
        else:
            self.nodes[node.name] = node
        return before

    def snapshot(self) -> dict[str, NodeInfo] | None:
        return dict(self.nodes) if self.synced else None


@dataclass(frozen=True)
class Refusal:
    generation: int  # of the spec that was refused
    message: str
    tries: int
    until: float  # time.monotonic() before which the API server is not asked again


class Reconciler:
    def __init__(
        self,
        kube: Kube,
        config: OperatorConfig,
        *,
        clock: Callable[[], datetime] = utcnow,
        nodes: NodeCache | None = None,
        cache: ObjectCache | None = None,
    ) -> None:
        self.kube = kube
        self.config = config
        # Jobs, pods and Services as the watches showed them; reads go to the API server
        # only while it is absent or not yet primed (kube/cache.py).
        self.cache = cache
        self.clock = clock
        self.nodes = nodes or NodeCache()
        self._writes = asyncio.Semaphore(config.write_concurrency)
        self._lanes = asyncio.Semaphore(config.write_lanes)
        self.phases: dict[Key, str] = {}
        # Jobs per phase, kept as phases change: recounting every job on every reconcile
        # made a burst of N jobs cost N^2.
        self.phase_counts: Counter[str] = Counter()
        for phase in Phase:  # every phase exported from start-up, 0 until a job is in it
            m.JOBS.labels(phase.value).set(0)
        # node name -> jobs with pods there, so a node going NotReady wakes exactly those jobs.
        self.jobs_on_node: dict[str, set[Key]] = {}
        # ... and its inverse, so a job's entries are dropped without visiting every node.
        self.nodes_of_job: dict[Key, set[str]] = {}
        # Jobs held back because no node could take their pods: any change to a node
        # (one added, made ready, given GPUs, relabelled, untainted) may let them start.
        self.waiting_for_nodes: set[Key] = set()
        # Jobs whose children the API server refused. Such a job is asked about again
        # (dry-run first) only after a growing pause, or at once when its spec changes.
        self.refusals: dict[Key, Refusal] = {}
        # The last planning error of each job that has one (logged once, not per retry).
        self.plan_errors: dict[Key, str] = {}
        # Namespaces found being deleted -> time.monotonic() until which they are left alone.
        self.terminating: dict[str, float] = {}
        # (namespace, shape) of objects a dry run admitted -> time.monotonic() until which
        # the answer is trusted (see _dry_run).
        self._admitted: dict[tuple[str, str], float] = {}
        # Events being posted. Like client-go's event recorder they go out in the
        # background: a reconcile (and the watch events queued behind it) never waits
        # for them, and the status they describe is already stored.
        self._posting: set[asyncio.Task[None]] = set()
        self._event_gate = asyncio.Semaphore(EVENT_CONCURRENCY)
        # Kueue's and gang schedulers' APIs, asked only for the jobs that use them.
        self.addons = AddOns(kube)

    async def reconcile(self, key: Key) -> float | None:
        """Converge one job. Returns seconds until it must be looked at again, if any."""
        started = time.perf_counter()
        try:
            return await self._reconcile(key)
        except Fenced as exc:  # the lease is lost: the operator is stopping
            log.info("job %s/%s: %s", *key, exc)
            return None
        except KubeError as exc:
            # Races every controller meets: said in one line, never as a traceback.
            if exc.status == 404:  # the job (or its namespace) went away mid-reconcile
                log.info("job %s/%s is gone (%s); forgetting it", *key, exc)
                self._forget(key)
                return None
            if exc.status == 409:  # written meanwhile (kubectl scale, a concurrent writer)
                log.info("job %s/%s changed meanwhile (%s); looking again", *key, exc)
                if self._cached():
                    # The watch has not shown the newer job yet: read it once.
                    fresh = await self.kube.get_job(*key)
                    if fresh is not None and self.cache is not None:
                        self.cache.put_job(fresh)
                return 0.0
            if exc.namespace_terminating:
                log.info("namespace %s is being deleted; leaving job %s alone", *key)
                self.terminating[key[0]] = time.monotonic() + TERMINATING_MEMORY_SECONDS
                self._forget(key)
                return None
            raise
        finally:
            m.RECONCILE_SECONDS.observe(time.perf_counter() - started)

    async def _reconcile(self, key: Key, *, in_lane: bool = False) -> float | None:
        namespace, name = key
        if time.monotonic() < self.terminating.get(namespace, 0.0):
            return None  # its jobs and pods are being deleted with it: nothing to replace
        job = (
            self.cache.job(namespace, name)
            if self.cache is not None and self._cached()
            else await self.kube.get_job(namespace, name)
        )
        if job is None or job["metadata"].get("deletionTimestamp"):
            self._forget(key)
            return None
        obs = await self.observe(job)
        now = self.clock()
        plan = self._plan(key, obs, now)
        if not in_lane and len(plan.creates) + len(plan.deletes) > 1:
            # Several objects (a new job, a coordinated restart): one job per lane at a
            # time, so a burst of jobs finishes job after job. A single replacement or
            # delete (a repair) never queues here. A lane may take minutes in a burst:
            # wait holding no plan (its built pods are most of a waiting job's memory),
            # then plan again from what is known by then.
            del job, obs, plan
            async with self._lanes:
                return await self._reconcile(key, in_lane=True)
        refused = await self._admission(key, obs, plan)
        if refused is not None:
            obs = replace(obs, admission_error=refused)
            plan = self._plan(key, obs, now)
        retry = await self.act(job, obs, plan)
        self._remember(key, plan.status, obs.pods, waits_for_nodes=plan.held_for_capacity > 0)
        if obs.spec is not None:
            m.JOB_RESTART_BUDGET.labels(*key).set(obs.spec.failure_policy.backoff_limit)
        waits = [w for w in (plan.requeue_after, retry) if w is not None]
        return min(waits) if waits else None

    def _plan(self, key: Key, obs: Observed, now: datetime) -> Plan:
        """compute_plan, with any exception it raises turned into the job's ReconcileError
        condition: one job's bad luck is never a silent retry loop or other jobs' problem."""
        try:
            plan = compute_plan(obs, now, self.config)
        except Exception as exc:  # any bug in planning, by design
            error = f"{type(exc).__name__}: {exc}"
            if self.plan_errors.get(key) != error:  # the traceback once per distinct error
                log.exception("job %s/%s: planning failed", *key)
            self.plan_errors[key] = error
            m.RECONCILE_ERRORS.inc()
            return planning_failed(obs, now, error)
        self.plan_errors.pop(key, None)
        return plan

    async def _admission(self, key: Key, obs: Observed, plan: Plan) -> str | None:
        """Why the API server would refuse the children this plan creates, if it would.

        Asked (by dry-run) before a job's first child exists, so a refusal leaves nothing
        half-created; before workers are restarted for an edited spec, so a refused edit
        stops nothing; and again after a refused create once its pause is over."""
        if not plan.creates and not plan.verify:
            return None
        refusal = self.refusals.get(key)
        if refusal is not None and refusal.generation != obs.generation:
            del self.refusals[key]  # the spec changed: ask again now
            refusal = None
        if refusal is not None and time.monotonic() < refusal.until:
            return refusal.message
        if refusal is None and not plan.verify and (obs.pods or obs.service_exists):
            return None
        message = await self._dry_run(plan.verify or plan.creates)
        if message is None:
            self.refusals.pop(key, None)
        else:
            self._refused(key, obs.generation, message)
        return message

    def _refused(self, key: Key, generation: int, message: str) -> float:
        before = self.refusals.get(key)
        tries = before.tries + 1 if before is not None else 1
        pause = min(REFUSED_BASE_SECONDS * 2.0 ** (tries - 1), REFUSED_MAX_SECONDS)
        self.refusals[key] = Refusal(generation, message, tries, time.monotonic() + pause)
        return pause

    async def _dry_run(self, creates: Iterable[ObjDict]) -> str | None:
        """The API server's message if it refuses one of the objects; every worker is
        built the same way, so one of each kind and role stands for all of them.

        An object of the same shape (equal but for its job's name and uid) admitted in
        the same namespace moments ago is not asked about again: a burst of identical
        jobs pays one dry run, not one per job. Only admissions are remembered, and any
        refusal in the namespace forgets them."""
        samples: dict[tuple[str, str], ObjDict] = {}
        for obj in creates:
            role = obj["metadata"].get("labels", {}).get(c.LABEL_ROLE, "")
            samples.setdefault((obj["kind"], role), obj)
        now = time.monotonic()
        shapes = {k: _shape(obj) for k, obj in samples.items()}
        ask = {k: obj for k, obj in samples.items() if self._admitted.get(shapes[k], 0.0) < now}
        results = await asyncio.gather(
            *(self.kube.create(obj, dry_run=True) for obj in ask.values()),
            return_exceptions=True,
        )
        for k, obj, result in zip(ask, ask.values(), results, strict=True):
            if isinstance(result, KubeError) and result.refused:
                self._forget_admitted(obj["metadata"].get("namespace", ""))
                return f"{obj['kind']} {obj['metadata']['name']}: {result.message}"
            if not isinstance(result, BaseException):
                self._admitted[shapes[k]] = now + ADMITTED_MEMORY_SECONDS
        _raise_first(results)
        if len(self._admitted) > ADMITTED_MEMORY_MAX:  # expired shapes go in bulk
            self._admitted = {s: t for s, t in self._admitted.items() if t >= now}
        return None

    def _forget_admitted(self, namespace: str) -> None:
        """A refusal (a new quota, a policy) may hold for every shape in the namespace."""
        self._admitted = {s: t for s, t in self._admitted.items() if s[0] != namespace}

    async def observe(self, job: ObjDict) -> Observed:
        meta = job["metadata"]
        namespace, name, uid = meta["namespace"], meta["name"], meta["uid"]
        spec, error = parse_spec(job.get("spec"))
        try:
            status = TrainingJobStatus.model_validate(job.get("status") or {})
        except ValidationError:
            log.warning(
                "job %s/%s has an unreadable status; starting from an empty one", namespace, name
            )
            status = TrainingJobStatus()
        cache = self.cache if self._cached() else None
        # Only our own children: a job recreated under the same name must not adopt
        # the previous job's pods while the garbage collector removes them.
        if cache is not None:
            pods = [p.pod for p in cache.job_pods(namespace, name) if uid in p.owners]
        else:
            raw = await self.kube.list_pods(namespace, f"{c.LABEL_JOB}={name}")
            pods = [parse_pod(p) for p in raw if _owned_by(p, uid)]
        service = (
            cache.service(namespace, name)
            if cache is not None
            else await self.kube.get_service(namespace, name)
        )
        job_ref = JobRef(name=name, namespace=namespace, uid=uid, labels=meta.get("labels") or {})
        # Also after the label is removed, until the job's Workload is gone.
        queued = job_ref.labels.get(c.LABEL_KUEUE_QUEUE) or any(
            x.type == COND_QUEUE_ADMITTED for x in status.conditions
        )
        queue = (
            await self.addons.observe_queue(job_ref, spec.scheduling.priority_class_name)
            if spec is not None and queued
            else None
        )
        gang_view = (
            await self.addons.observe_gang(job_ref)
            if spec is not None and spec.scheduling.gang is not None
            else None
        )
        missing_pvc = None
        if spec is not None and not any(p.active for p in pods):
            claim = (spec.checkpoint.volume or {}).get("persistentVolumeClaim") or {}
            claim_name = claim.get("claimName")
            if claim_name and await self.kube.get_pvc(namespace, claim_name) is None:
                missing_pvc = claim_name
        return Observed(
            job=job_ref,
            generation=int(meta.get("generation", 0)),
            spec=spec,
            spec_error=error,
            status=status,
            pods=pods,
            service_exists=service is not None and _owned_by(service, uid),
            nodes=self.nodes.snapshot(),
            missing_pvc=missing_pvc,
            queue=queue,
            gang=gang_view,
        )

    async def act(self, job: ObjDict, obs: Observed, plan: Plan) -> float | None:
        """Status first when the plan records a failure, deletes a pod or writes the
        job's Kueue Workload: a failure is then stored as handled before its pod goes, so
        an operator killed in between never counts it twice or loses it. A plan that only creates
        writes its status after the creates, so a new job's first pod does not wait for
        a status round trip. Events describe the stored status: they are posted in the
        background once it is written.

        Returns seconds until a refused create may be tried again, if one was refused."""
        in_place = plan.status.in_place_restarts - obs.status.in_place_restarts
        status_first = bool(
            plan.failures or plan.deletes or plan.workload or plan.delete_job or in_place > 0
        )
        if status_first:
            await self._write_status(job, plan)
            self._post(job, plan.events)
        for lf in plan.failures:
            m.RESTARTS.labels(lf.reason, str(lf.counted).lower()).inc()
        # torchrun restarted worker groups in place: no pod failed, but the budget paid.
        if in_place > 0:
            m.RESTARTS.labels(IN_PLACE, "true").inc(in_place)
        retry = await self._change_children(job, obs, plan)
        if not status_first:
            await self._write_status(job, plan)
            self._post(job, plan.events)
        return retry

    async def _write_status(self, job: ObjDict, plan: Plan) -> None:
        new_status = plan.status.to_api()
        if new_status != (job.get("status") or {}):
            self._write_through(await self.kube.replace_job_status(job, new_status))

    def _post(self, job: ObjDict, events: Iterable[Event]) -> None:
        for ev in events:
            task = asyncio.create_task(self._emit(job, ev), name=f"event {ev.reason}")
            self._posting.add(task)
            task.add_done_callback(self._posted)

    def _posted(self, task: asyncio.Task[None]) -> None:
        self._posting.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.info("event not posted: %s", exc)  # e.g. Fenced: the operator is stopping

    async def drain_events(self) -> None:
        """Wait for the events still being posted (at shutdown, and in tests)."""
        while self._posting:
            await asyncio.gather(*list(self._posting), return_exceptions=True)

    async def _change_children(self, job: ObjDict, obs: Observed, plan: Plan) -> float | None:
        ns = obs.job.namespace
        key = (ns, obs.job.name)
        gone = await self._delete_pods(ns, obs.job.name, plan.deletes)
        first, pods, results = await self._create_all(plan.creates)
        refused = [
            (obj, r)
            for obj, r in zip([*first, *pods], results, strict=True)
            if isinstance(r, KubeError) and r.refused
        ]
        _raise_first([r for r in results if not (isinstance(r, KubeError) and r.refused)])
        retry = None
        if refused:
            # Sending the same object again gets the same answer: say so once per try,
            # and try again only after a growing pause (quota may free up meanwhile).
            obj, exc = refused[0]
            self._forget_admitted(ns)
            what = f"{obj['kind']} {obj['metadata']['name']}"
            retry = self._refused(key, obs.generation, f"{what}: {exc.message}")
            log.warning(
                "job %s/%s: %d create(s) refused, e.g. %s: %s; next try in %.0fs",
                *key,
                len(refused),
                what,
                exc,
                retry,
            )
            await self._emit(
                job, Event("Warning", "CreateRejected", f"{what} was refused: {exc.message}")
            )
        for write in plan.workload:
            done = await self.addons.write_workload(ns, write)
            if done.refused is not None:
                await self._emit(job, Event("Warning", "WorkloadRejected", done.refused))
            if done.retry_after is not None:
                retry = done.retry_after if retry is None else min(retry, done.retry_after)
        if plan.delete_job:
            await self.kube.delete_job(ns, obs.job.name, obs.job.uid)
            if self.cache is not None:
                self.cache.drop_job(ns, obs.job.name)
        if gone and retry is None:
            retry = 0.0  # plan again now: the freed name can take its replacement
        return retry

    async def _delete_pods(self, ns: str, job: str, deletes: Iterable[PodDelete]) -> bool:
        """Delete the pods; True if one of them is gone at once (see ObjectCache.pod_deleted):
        its replacement can then be created without waiting for the watch to say so."""
        todo = list(deletes)
        deleted = await asyncio.gather(
            *(
                self._bounded(self.kube.delete_pod(ns, d.name, d.uid, d.grace_seconds))
                for d in todo
            ),
            return_exceptions=True,
        )
        gone = False
        if self.cache is not None:
            now = self.clock()
            for d, result in zip(todo, deleted, strict=True):
                if not isinstance(result, BaseException):
                    gone |= self.cache.pod_deleted(ns, job, d.uid, now)
        _raise_first(deleted)
        return gone

    async def _create_all(
        self, creates: Iterable[ObjDict]
    ) -> tuple[list[ObjDict], list[ObjDict], list[object]]:
        """Create everything; (non-pods, pods, results in that order). The Service and
        NetworkPolicy go before any pod: a pod never runs unprotected."""
        objs = list(creates)
        first = [o for o in objs if o["kind"] != "Pod"]
        pods = [o for o in objs if o["kind"] == "Pod"]
        results: list[object] = []
        for batch in (first, pods):
            results += await asyncio.gather(
                *(self._bounded(self.kube.create(obj)) for obj in batch),
                return_exceptions=True,
            )
        for created in results:
            if isinstance(created, dict):
                self._write_through(created)
        return first, pods, results

    def _cached(self) -> bool:
        return self.cache is not None and self.cache.primed

    def _write_through(self, obj: ObjDict | None) -> None:
        """What the API server answered a write with goes into the cache at once: the
        next reconcile sees its own create, delete or status before the watch does, so
        it never creates twice, misses a replacement or writes a stale status."""
        if self.cache is None or not obj:
            return
        kind = obj.get("kind")
        if kind == c.KIND:
            self.cache.put_job(obj)
        elif kind in ("Pod", "Service"):
            self.cache.put_child(obj)

    async def _bounded(self, call: Awaitable[T]) -> T:
        async with self._writes:
            return await call

    async def _emit(self, job: ObjDict, ev: Event) -> None:
        # Few at a time: a burst of Events must not take the connections that the
        # status writes, deletes and creates of other jobs are waiting for.
        async with self._event_gate:
            await self._post_event(job, ev)

    async def _post_event(self, job: ObjDict, ev: Event) -> None:
        meta = job["metadata"]
        stamp = self.clock().isoformat().replace("+00:00", "Z")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": c.API_VERSION,
                "kind": c.KIND,
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
                "resourceVersion": meta.get("resourceVersion"),
            },
            "reason": ev.reason,
            "message": ev.message[:1024],
            "type": ev.type,
            "source": {"component": "trainop-operator"},
            "reportingComponent": "trainop.dev/operator",
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            await self.kube.create_event(body)
        except KubeError as exc:  # an event is best effort; the status already says it
            if exc.namespace_terminating:
                self.terminating[meta["namespace"]] = time.monotonic() + TERMINATING_MEMORY_SECONDS
                log.info(
                    "namespace %s is being deleted: event %s dropped", meta["namespace"], ev.reason
                )
                return
            log.warning("could not record event %s: %s", ev.reason, exc)

    def namespace_changed(self, name: str, *, gone: bool, deleting: bool) -> None:
        """From the namespace watch: a namespace being deleted is left alone until it
        is gone (its pods are deleted before its jobs: not failures to replace)."""
        if gone or not deleting:
            self.terminating.pop(name, None)
        else:
            self.terminating[name] = math.inf

    def jobs_woken_by(self, name: str, before: NodeInfo | None, after: NodeInfo | None) -> set[Key]:
        """Jobs to look at again after an event changed node `name` from `before` to `after`."""
        woken = set(self.jobs_on_node.get(name, ())) if _readiness_changed(before, after) else set()
        if before != after:  # heartbeats alone change nothing NodeInfo holds
            woken |= self.waiting_for_nodes
        return woken

    def _remember(
        self,
        key: Key,
        status: TrainingJobStatus,
        pods: Iterable[ObservedPod],
        *,
        waits_for_nodes: bool = False,
    ) -> None:
        phase = (status.phase or Phase.PENDING).value
        before = self.phases.get(key)
        if before != phase:
            for each in Phase:
                m.JOB_PHASE.labels(*key, each.value).set(1 if each.value == phase else 0)
            self._count_phase(before, phase)
        self.phases[key] = phase
        m.JOB_RESTARTS.labels(*key).set(status.restarts)
        if status.reason == REASON_NO_CAPACITY or waits_for_nodes:
            self.waiting_for_nodes.add(key)
        else:
            self.waiting_for_nodes.discard(key)
        nodes = {pod.node_name for pod in pods if pod.node_name}
        if nodes != self.nodes_of_job.get(key, set()):
            self._unplace(key)
            for node in nodes:
                self.jobs_on_node.setdefault(node, set()).add(key)
            if nodes:
                self.nodes_of_job[key] = nodes

    def _forget(self, key: Key) -> None:
        # A deleted job's series go away with it: no stale per-job series.
        before = self.phases.pop(key, None)
        if before is not None:
            for each in Phase:
                with contextlib.suppress(KeyError):
                    m.JOB_PHASE.remove(*key, each.value)
            for gauge in (m.JOB_RESTARTS, m.JOB_RESTART_BUDGET):
                with contextlib.suppress(KeyError):
                    gauge.remove(*key)
            self._count_phase(before, None)
        self._unplace(key)
        self.refusals.pop(key, None)
        self.plan_errors.pop(key, None)
        self.waiting_for_nodes.discard(key)

    def _unplace(self, key: Key) -> None:
        for node in self.nodes_of_job.pop(key, ()):
            jobs = self.jobs_on_node.get(node)
            if jobs is not None:
                jobs.discard(key)
                if not jobs:
                    del self.jobs_on_node[node]

    def _count_phase(self, before: str | None, after: str | None) -> None:
        for phase, step in ((before, -1), (after, 1)):
            if phase is not None:
                self.phase_counts[phase] += step
                m.JOBS.labels(phase).set(self.phase_counts[phase])


def _shape(obj: ObjDict) -> tuple[str, str]:
    """(namespace, digest of the object with its job's name and uid taken out): objects
    of two jobs built from the same spec have the same shape. The name's length stays
    in, since names are checked against length limits (a hostname is a DNS label)."""
    meta = obj["metadata"]
    refs = meta.get("ownerReferences") or [{}]
    job, uid = str(refs[0].get("name") or meta["name"]), str(refs[0].get("uid") or "")
    text = json.dumps(obj, sort_keys=True)
    if uid:
        text = text.replace(uid, "\x00uid")
    text = text.replace(job, f"\x00job{len(job)}")
    return str(meta.get("namespace", "")), hashlib.sha256(text.encode()).hexdigest()


def _owned_by(obj: ObjDict, uid: str) -> bool:
    refs = obj.get("metadata", {}).get("ownerReferences") or []
    return any(ref.get("uid") == uid for ref in refs)


def _raise_first(results: Iterable[object]) -> None:
    """Raise the first error of calls gathered with return_exceptions (after all finished)."""
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        raise errors[0]


def _readiness_changed(before: NodeInfo | None, after: NodeInfo | None) -> bool:
    """A node came, went, or turned Ready/NotReady: its pods' jobs must know."""
    return before is None or after is None or before.ready != after.ready

"""The one place that joins the pure core and the Kubernetes adapter:
observe -> decide (core.compute_plan) -> act -> write status once -> emit events."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
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
from trainop.core.plan import Event, Observed, Plan, compute_plan
from trainop.kube.client import Kube, KubeError

log = logging.getLogger("trainop.reconcile")
ObjDict = dict[str, Any]
Key = tuple[str, str]  # (namespace, name)
T = TypeVar("T")


def utcnow() -> datetime:
    # metav1.Time has second precision; sub-second times would make every status "changed".
    return datetime.now(UTC).replace(microsecond=0)


@dataclass
class NodeCache:
    """Nodes as seen through the operator's node watch (None until it has synced)."""

    nodes: dict[str, NodeInfo] = field(default_factory=dict)
    synced: bool = False

    def update(self, event_type: str, obj: ObjDict) -> NodeInfo | None:
        node = parse_node(obj)
        before = self.nodes.get(node.name)
        if event_type == "DELETED":
            self.nodes.pop(node.name, None)
        else:
            self.nodes[node.name] = node
        self.synced = True
        return before

    def snapshot(self) -> dict[str, NodeInfo] | None:
        return dict(self.nodes) if self.synced else None


class Reconciler:
    def __init__(
        self,
        kube: Kube,
        config: OperatorConfig,
        *,
        clock: Callable[[], datetime] = utcnow,
        nodes: NodeCache | None = None,
    ) -> None:
        self.kube = kube
        self.config = config
        self.clock = clock
        self.nodes = nodes or NodeCache()
        self._writes = asyncio.Semaphore(config.write_concurrency)
        self.phases: dict[Key, str] = {}
        # node name -> jobs with pods there, so a node going NotReady wakes exactly those jobs.
        self.jobs_on_node: dict[str, set[Key]] = {}

    async def reconcile(self, key: Key) -> float | None:
        """Converge one job. Returns seconds until it must be looked at again, if any."""
        started = time.perf_counter()
        try:
            return await self._reconcile(key)
        finally:
            m.RECONCILE_SECONDS.observe(time.perf_counter() - started)

    async def _reconcile(self, key: Key) -> float | None:
        namespace, name = key
        job = await self.kube.get_job(namespace, name)
        if job is None or job["metadata"].get("deletionTimestamp"):
            self._forget(key)
            return None
        obs = await self.observe(job)
        plan = compute_plan(obs, self.clock(), self.config)
        await self.act(job, obs, plan)
        self._remember(key, plan.status, obs.pods)
        if obs.spec is not None:
            m.JOB_RESTART_BUDGET.labels(*key).set(obs.spec.failure_policy.backoff_limit)
        return plan.requeue_after

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
        raw_pods = await self.kube.list_pods(namespace, f"{c.LABEL_JOB}={name}")
        # Only our own children: a job recreated under the same name must not adopt
        # the previous job's pods while the garbage collector removes them.
        pods = [parse_pod(p) for p in raw_pods if _owned_by(p, uid)]
        service = await self.kube.get_service(namespace, name)
        missing_pvc = None
        if spec is not None and not any(p.active for p in pods):
            claim = (spec.checkpoint.volume or {}).get("persistentVolumeClaim") or {}
            claim_name = claim.get("claimName")
            if claim_name and await self.kube.get_pvc(namespace, claim_name) is None:
                missing_pvc = claim_name
        return Observed(
            job=JobRef(name=name, namespace=namespace, uid=uid, labels=meta.get("labels") or {}),
            generation=int(meta.get("generation", 0)),
            spec=spec,
            spec_error=error,
            status=status,
            pods=pods,
            service_exists=service is not None and _owned_by(service, uid),
            nodes=self.nodes.snapshot(),
            missing_pvc=missing_pvc,
        )

    async def act(self, job: ObjDict, obs: Observed, plan: Plan) -> None:
        """Status first: a failure is recorded as handled before its pod is deleted,
        so an operator killed in between never counts it twice or loses it."""
        new_status = plan.status.to_api()
        if new_status != (job.get("status") or {}):
            await self.kube.replace_job_status(job, new_status)
        ns = obs.job.namespace
        if plan.suspend_job:
            await self.kube.patch_job(ns, obs.job.name, {"spec": {"suspend": True}})
        await _gather(
            self._bounded(self.kube.delete_pod(ns, d.name, d.uid, d.grace_seconds))
            for d in plan.deletes
        )
        await _gather(self._bounded(self.kube.create(obj)) for obj in plan.creates)
        # Events only after the status they describe is stored.
        for ev in plan.events:
            await self._emit(job, ev)
        if plan.status.last_failure is not None and (
            obs.status.last_failure is None
            or obs.status.last_failure.pod_uid != plan.status.last_failure.pod_uid
        ):
            lf = plan.status.last_failure
            m.RESTARTS.labels(lf.reason, str(lf.counted).lower()).inc()
        if plan.delete_job:
            await self.kube.delete_job(ns, obs.job.name, obs.job.uid)

    async def _bounded(self, call: Awaitable[T]) -> T:
        async with self._writes:
            return await call

    async def _emit(self, job: ObjDict, ev: Event) -> None:
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
            log.warning("could not record event %s: %s", ev.reason, exc)

    def _remember(self, key: Key, status: TrainingJobStatus, pods: Iterable[ObservedPod]) -> None:
        phase = (status.phase or Phase.PENDING).value
        if self.phases.get(key) != phase:
            for each in Phase:
                m.JOB_PHASE.labels(*key, each.value).set(1 if each.value == phase else 0)
        self.phases[key] = phase
        m.JOB_RESTARTS.labels(*key).set(status.restarts)
        for jobs in self.jobs_on_node.values():
            jobs.discard(key)
        for pod in pods:
            if pod.node_name:
                self.jobs_on_node.setdefault(pod.node_name, set()).add(key)
        self._export_phases()

    def _forget(self, key: Key) -> None:
        # A deleted job's series go away with it: no stale per-job series.
        if self.phases.pop(key, None) is not None:
            for each in Phase:
                with contextlib.suppress(KeyError):
                    m.JOB_PHASE.remove(*key, each.value)
            for gauge in (m.JOB_RESTARTS, m.JOB_RESTART_BUDGET):
                with contextlib.suppress(KeyError):
                    gauge.remove(*key)
        for jobs in self.jobs_on_node.values():
            jobs.discard(key)
        self._export_phases()

    def _export_phases(self) -> None:
        for phase in Phase:
            count = sum(1 for p in self.phases.values() if p == phase.value)
            m.JOBS.labels(phase.value).set(count)


def _owned_by(obj: ObjDict, uid: str) -> bool:
    refs = obj.get("metadata", {}).get("ownerReferences") or []
    return any(ref.get("uid") == uid for ref in refs)


async def _gather(calls: Iterable[Any]) -> None:
    """Run API calls concurrently; raise the first error after all have finished."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        raise errors[0]

"""Test factories for TrainingJob specs, observed pods and nodes (pure data)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from trainop.api import constants as c
from trainop.api.spec import TrainingJobSpec
from trainop.api.status import TrainingJobStatus
from trainop.core.build import JobRef
from trainop.core.observe import NodeInfo, ObservedPod, Termination
from trainop.core.plan import Observed

NOW = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)
JOB = JobRef(name="llm", namespace="team-a", uid="uid-1", labels={})


def spec(**overrides: Any) -> TrainingJobSpec:
    base: dict[str, Any] = {
        "image": "trainer:1",
        "entrypoint": {"module": "trainop_runtime.examples.tinylm", "args": ["--steps", "10"]},
        "replicas": 2,
        "minReplicas": 1,
        "maxReplicas": 4,
        "resources": {"gpus": 2},
    }
    base.update(overrides)
    return TrainingJobSpec.model_validate(base)


def worker(slot: int, phase: str = "Running", **kw: Any) -> ObservedPod:
    pod = ObservedPod(
        name=f"llm-worker-{slot}",
        uid=f"pod-{slot}",
        role=c.ROLE_WORKER,
        slot=slot,
        job_generation=0,
        phase=phase,
        ready=phase == "Running",
        node_name="gpu-node-0",
    )
    return replace(pod, **kw)


def failed(slot: int, exit_code: int = 1, reason: str = "Error", **kw: Any) -> ObservedPod:
    return worker(slot, "Failed", trainer=Termination(exit_code, reason, "boom"), **kw)


def store(phase: str = "Running") -> ObservedPod:
    return ObservedPod(
        name="llm-rdzv",
        uid="store",
        role=c.ROLE_STORE,
        slot=None,
        job_generation=0,
        phase=phase,
        ready=True,
    )


def node(
    name: str = "gpu-node-0",
    gpus: int = 8,
    ready: bool = True,
    not_ready_since: datetime | None = None,
    labels: dict[str, str] | None = None,
) -> NodeInfo:
    return NodeInfo(
        name=name,
        ready=ready,
        not_ready_since=not_ready_since,
        allocatable={"nvidia.com/gpu": str(gpus)},
        labels=labels or {},
    )


def observed(
    pods: list[ObservedPod] | None = None,
    *,
    the_spec: TrainingJobSpec | None = None,
    status: dict[str, Any] | None = None,
    nodes: list[NodeInfo] | None = None,
    service: bool = True,
    **kw: Any,
) -> Observed:
    return Observed(
        job=kw.pop("job", JOB),
        generation=1,
        spec=the_spec if the_spec is not None else spec(),
        spec_error=None,
        status=TrainingJobStatus.model_validate(status or {}),
        pods=pods if pods is not None else [],
        service_exists=service,
        nodes={n.name: n for n in nodes} if nodes is not None else None,
        **kw,
    )


def workload_obj(
    *,
    conditions: dict[str, tuple[bool, str, str]] | None = None,
    admitted: dict[str, int] | None = None,
    flavor: str = "gpu-a",
    queue: str = "research",
    counts: tuple[int, int | None] = (2, 1),
    owner: str = "uid-1",
    name: str | None = None,
) -> dict[str, Any]:
    """A Workload as the API server holds it: `conditions` type -> (status, reason,
    message); `admitted` podSet -> count gives it an admission on `flavor`."""
    from trainop.core import kueue

    workers: dict[str, Any] = {"name": "workers", "count": counts[0]}
    if counts[1] is not None:
        workers["minCount"] = counts[1]
    status: dict[str, Any] = {
        "conditions": [
            {
                "type": t,
                "status": "True" if on else "False",
                "reason": reason,
                "message": message,
                "lastTransitionTime": "2026-11-22T11:00:00Z",
            }
            for t, (on, reason, message) in (conditions or {}).items()
        ]
    }
    if admitted is not None:
        status["admission"] = {
            "clusterQueue": "gpus",
            "podSetAssignments": [
                {"name": n, "count": k, "flavors": {"nvidia.com/gpu": flavor}}
                for n, k in admitted.items()
            ],
        }
    return {
        "apiVersion": c.KUEUE_API_VERSION,
        "kind": "Workload",
        "metadata": {
            "name": name or kueue.workload_name(JOB),
            "namespace": JOB.namespace,
            "uid": "wl-1",
            "resourceVersion": "42",
            "ownerReferences": [{"kind": c.KIND, "uid": owner, "name": JOB.name}],
        },
        "spec": {
            "queueName": queue,
            "podSets": [workers, {"name": "store", "count": 1}],
        },
        "status": status,
    }

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

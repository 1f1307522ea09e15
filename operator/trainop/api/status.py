"""Typed TrainingJob status. The operator computes it whole, once per reconcile."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel


class Phase(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    RESTARTING = "Restarting"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"

    @property
    def finished(self) -> bool:
        return self in (Phase.SUCCEEDED, Phase.FAILED)


class _Status(BaseModel):
    # Status is ours, but an older or newer operator may have written fields we do
    # not know: ignore them rather than fail the reconcile.
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class Condition(_Status):
    type: str
    status: str
    reason: str
    message: str
    last_transition_time: datetime
    observed_generation: int | None = None


class LastFailure(_Status):
    pod: str
    pod_uid: str = Field(alias="podUID")  # Kubernetes spells it UID, not Uid
    exit_code: int | None = None
    reason: str
    message: str = ""
    action: str
    counted: bool
    time: datetime


class LiveWorker(_Status):
    """A worker pod seen alive that the operator has not deleted or written off."""

    pod: str
    pod_uid: str = Field(alias="podUID")
    # High-water mark of the in-place restarts its torchrun agent reported: a lower
    # report (a torn annotation) never takes back what was counted.
    restarts: int = 0


class Progress(_Status):
    step: int | None = None
    total_steps: int | None = None
    samples: int | None = None
    loss: float | None = None
    samples_per_second: float | None = None
    checkpoint_step: int | None = None
    checkpoint_time: datetime | None = None
    update_time: datetime | None = None
    summary: str | None = None


class PodUsage(_Status):
    """The last totals one live worker pod's sidecar reported: what the next report is
    counted from."""

    pod_uid: str = Field(alias="podUID")
    gpu_seconds: float = 0.0
    idle_gpu_seconds: float = 0.0
    energy_joules: float = 0.0


class Usage(_Status):
    """What the job has cost so far, over every pod it ever had: a replaced pod's share
    stays counted. GPU-seconds are GPUs held, busy or not; idle ones are those at 0 %
    utilization; energy is what the GPUs drew (NVML's energy counter)."""

    gpu_seconds: float = 0.0
    idle_gpu_seconds: float = 0.0
    energy_joules: float = 0.0
    # The same in the units `kubectl get tj -o wide` shows (its columns cannot compute).
    gpu_hours: float = 0.0
    energy_kwh: float = Field(default=0.0, alias="energyKWh")
    pods: list[PodUsage] = []


class TrainingJobStatus(_Status):
    observed_generation: int | None = None
    phase: Phase | None = None
    reason: str | None = None
    message: str | None = None
    conditions: list[Condition] = []
    replicas: int = 0
    ready_replicas: int = 0
    desired_replicas: int = 0
    workers: str | None = None
    selector: str | None = None
    # Every restart against failurePolicy.backoffLimit: pod replacements plus the
    # in-place worker-group restarts the agents report. Never reset.
    restarts: int = 0
    in_place_restarts: int = 0  # the in-place part of restarts
    live_workers: list[LiveWorker] = []
    restarts_summary: str | None = None
    restarts_by_reason: dict[str, int] = Field(default_factory=dict)
    job_generation: int = 0
    # A short hash of each spec field that shapes the workers, as the running workers
    # were built: an edit shows as a difference, which restarts every worker together.
    applied_spec: dict[str, str] = Field(default_factory=dict)
    last_failure: LastFailure | None = None
    handled_failures: list[str] = []
    retry_after: datetime | None = None
    # When the job was last admitted (created or resumed): activeDeadlineSeconds counts
    # from here, as for a Kubernetes Job, even if no pod ever runs.
    admission_time: datetime | None = None
    start_time: datetime | None = None  # when minReplicas workers first ran since admission
    # Since when some current worker pod has been waiting (unscheduled or not started).
    pending_since: datetime | None = None
    completion_time: datetime | None = None
    progress: Progress | None = None
    usage: Usage | None = None

    def to_api(self) -> dict[str, object]:
        """The JSON the API server stores: camelCase, RFC 3339 times, no nulls."""
        data: dict[str, object] = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        return data

"""Typed TrainingJob spec, parsed once at the boundary.

Defaults here equal the CRD's (a test checks it), so a spec that never went
through an API server (the local runner) means the same thing as one that did.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from trainop.api import podspec


class _Model(BaseModel):
    # Unknown fields are an error, never silently dropped: a typo such as
    # `maxReplica` must fail loudly (the API server prunes; the local runner must not).
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class Action(StrEnum):
    RESTART_POD = "RestartPod"
    RESTART_JOB = "RestartJob"
    FAIL_JOB = "FailJob"
    IGNORE = "Ignore"


class Reason(StrEnum):
    """Why a worker pod stopped. Matches failurePolicy.rules[].reasons."""

    ERROR = "Error"  # the trainer exited non-zero
    OOM_KILLED = "OOMKilled"
    EVICTED = "Evicted"  # kubelet pressure eviction
    PREEMPTED = "Preempted"  # DisruptionTarget: scheduler preemption, API eviction, taint manager
    NODE_LOST = "NodeLost"
    DELETED = "Deleted"  # the pod vanished without a recorded failure
    # The pod's own activeDeadlineSeconds (spec.podTemplate.spec) ran out and the kubelet
    # stopped it; not the job's runPolicy.activeDeadlineSeconds, which fails the whole job.
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    # The launcher lost the rendezvous store pod (its EXIT_RENDEZVOUS_LOST): one store loss
    # fails every worker at once, so it is free when the store the worker knew is gone.
    RENDEZVOUS_LOST = "RendezvousLost"
    # The worker made no step for longer than failurePolicy.hangSeconds and
    # failurePolicy.restartOnHang had trainop restart it.
    HANG = "Hang"


class CleanPodPolicy(StrEnum):
    NONE = "None"
    RUNNING = "Running"
    ALL = "All"


MODULE_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"
# Every path component starts with a letter, digit or _: no "..", no option-like "-x.py".
SCRIPT_PATTERN = r"^(\./|/)?[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*\.py$"
ArgStr = Annotated[str, Field(max_length=4096)]
# The API server's own grammars (apimachinery resource.Quantity, validation.IsDNS1123Subdomain,
# IsQualifiedName). The CRD carries the same patterns; checking here too gives the local runner,
# and a job stored before a pattern existed, the same clear message instead of a rejected pod.
QUANTITY_PATTERN = (
    r"^(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
EXTENDED_RESOURCE_PATTERN = (
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
    r"/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
# The image reference grammar of the distribution project (github.com/distribution/reference):
# [domain[:port]/]path[/path...][:tag][@algorithm:hex], lowercase paths. Anything else (a
# space, `$(id)`, a backtick, `;`) is refused before it reaches a pod. No IPv6 hosts.
_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_PATH_PART = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
IMAGE_PATTERN = (
    rf"^(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*(?::[0-9]+)?/)?{_PATH_PART}(?:/{_PATH_PART})*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$"
)
IMAGE_MAX_LENGTH = 512


def _grammar(pattern: str, max_length: int, what: str, fix: str) -> Callable[[str], str]:
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if len(value) > max_length or compiled.fullmatch(value) is None:
            raise ValueError(f"{value!r} is not {what}; {fix}")
        return value

    return check


_dns_subdomain = _grammar(
    DNS_SUBDOMAIN_PATTERN,
    253,
    "a Kubernetes object name",
    "use lowercase letters, digits, '-' and '.', starting and ending with a letter or digit",
)
ObjectName = Annotated[str, AfterValidator(_dns_subdomain)]
Image = Annotated[
    str,
    Field(min_length=1),
    AfterValidator(
        _grammar(
            IMAGE_PATTERN,
            IMAGE_MAX_LENGTH,
            "an image reference",
            "write [registry[:port]/]repository[:tag][@sha256:digest] with a lowercase "
            "repository, e.g. ghcr.io/org/trainer:1.0",
        )
    ),
]


def _quantity(what: str, examples: str) -> AfterValidator:
    text = _grammar(QUANTITY_PATTERN, 64, f"a {what} quantity", f"write it as {examples}")

    def check(value: int | str) -> int | str:
        if isinstance(value, str):
            return text(value)
        if value < 0:
            raise ValueError(f"{value} is negative; write a {what} request as {examples}")
        return value

    return AfterValidator(check)


CpuQuantity = Annotated[int | str, _quantity("CPU", "cores (4, 0.5) or millicores (500m)")]
MemoryQuantity = Annotated[
    int | str, _quantity("memory", "bytes with a binary suffix (16Gi, 512Mi)")
]


class Entrypoint(_Model):
    module: Annotated[str, Field(max_length=256, pattern=MODULE_PATTERN)] | None = None
    script: Annotated[str, Field(max_length=1024, pattern=SCRIPT_PATTERN)] | None = None
    command: Annotated[list[ArgStr], Field(max_length=64, min_length=1)] | None = None
    args: Annotated[list[ArgStr], Field(max_length=256)] = []

    @model_validator(mode="after")
    def _exactly_one(self) -> Entrypoint:
        chosen = [self.module is not None, self.script is not None, self.command is not None]
        if sum(chosen) != 1:
            raise ValueError(
                "set exactly one of spec.entrypoint.module, spec.entrypoint.script "
                "or spec.entrypoint.command"
            )
        if self.command is not None and self.command[0].startswith("-"):
            # torchrun would read it as one of its own options (e.g. --rdzv-endpoint).
            raise ValueError("spec.entrypoint.command[0] must not start with '-'")
        return self


class EnvVar(BaseModel):
    # valueFrom and friends pass through untouched: the API server validates them on the pod.
    model_config = ConfigDict(extra="allow", frozen=True)
    name: Annotated[str, Field(min_length=1, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")]
    value: str | None = None


class Resources(_Model):
    gpus: Annotated[int, Field(ge=0, le=64)] = 0
    gpu_resource_name: Annotated[
        str,
        AfterValidator(
            _grammar(
                EXTENDED_RESOURCE_PATTERN,
                316,
                "an extended resource name",
                "use the domain/name your device plugin registers: nvidia.com/gpu, amd.com/gpu",
            )
        ),
    ] = "nvidia.com/gpu"
    cpu: CpuQuantity | None = None
    memory: MemoryQuantity | None = None


# Upper bounds of every number that becomes a duration: each is far beyond any real
# use, and each keeps `now + timedelta(seconds=n)` inside datetime's range, so no spec
# can make planning raise (a deadline of 3e11 s once wedged a job in an OverflowError loop).
HOUR = 3600
DAY = 24 * HOUR
WEEK = 7 * DAY
YEAR = 365 * DAY


class Rendezvous(_Model):
    port: Annotated[int, Field(ge=1024, le=65535)] = 29400
    join_timeout_seconds: Annotated[int, Field(ge=1, le=DAY)] = 600
    last_call_timeout_seconds: Annotated[int, Field(ge=0, le=HOUR)] = 5
    max_restarts_per_agent: Annotated[int, Field(ge=0)] | None = None


class FailureRule(_Model):
    action: Action
    exit_codes: (
        Annotated[list[Annotated[int, Field(ge=1, le=255)]], Field(max_length=255)] | None
    ) = None
    reasons: list[Reason] | None = None

    @model_validator(mode="after")
    def _has_matcher(self) -> FailureRule:
        if self.exit_codes is None and self.reasons is None:
            raise ValueError("a failure rule needs exitCodes or reasons to match on")
        return self


class FailurePolicy(_Model):
    backoff_limit: Annotated[int, Field(ge=0)] = 6
    backoff_seconds: Annotated[int, Field(ge=0, le=DAY)] = 10
    max_backoff_seconds: Annotated[int, Field(ge=0, le=DAY)] = 300
    rules: Annotated[list[FailureRule], Field(max_length=32)] = []
    # No step for this long marks a worker Stalled. None: max(10 x its step time, 120 s).
    hang_seconds: Annotated[int, Field(ge=10, le=WEEK)] | None = None
    # Also restart a stalled worker (reason Hang, counted unless a rule says otherwise).
    restart_on_hang: bool = False


class RunPolicy(_Model):
    active_deadline_seconds: Annotated[int, Field(ge=1, le=YEAR)] | None = None
    ttl_seconds_after_finished: Annotated[int, Field(ge=0, le=YEAR)] | None = None
    clean_pod_policy: CleanPodPolicy = CleanPodPolicy.RUNNING


class Checkpoint(_Model):
    volume: dict[str, Any] | None = None
    mount_path: Annotated[str, Field(pattern=r"^/[A-Za-z0-9_./-]*$")] = "/checkpoints"
    every_steps: Annotated[int, Field(ge=1)] | None = None
    every_seconds: Annotated[int, Field(ge=1, le=WEEK)] | None = None

    @field_validator("volume")
    @classmethod
    def _claim_name(cls, volume: dict[str, Any] | None) -> dict[str, Any] | None:
        # The operator looks the claim up by name, so it becomes part of a request path.
        claim = (volume or {}).get("persistentVolumeClaim")
        name = claim.get("claimName") if isinstance(claim, dict) else None
        if name is not None:
            if not isinstance(name, str):
                raise ValueError("persistentVolumeClaim.claimName must be a string")
            try:
                _dns_subdomain(name)
            except ValueError as exc:
                raise ValueError(f"persistentVolumeClaim.claimName: {exc}") from None
        return volume


class PodGroupApi(StrEnum):
    """Which PodGroup API a gang is made with: Auto picks the one the cluster serves
    (Volcano's when both are and schedulerName is volcano, else scheduler-plugins')."""

    AUTO = "Auto"
    VOLCANO = "scheduling.volcano.sh/v1beta1"
    COSCHEDULING = "scheduling.x-k8s.io/v1alpha1"


class Gang(_Model):
    """Gang scheduling: the workers are placed all together (at least minReplicas of
    them) or not at all, by a scheduler that reads PodGroups."""

    pod_group_api_version: PodGroupApi = Field(default=PodGroupApi.AUTO, alias="podGroupAPIVersion")
    # scheduler-plugins' coscheduling gives up on a gang after this long (its default is 60s).
    schedule_timeout_seconds: Annotated[int, Field(ge=1, le=DAY)] | None = None
    # Volcano's queue of the PodGroup (Volcano's default queue when unset).
    queue: ObjectName | None = None


class Scheduling(_Model):
    node_selector: dict[str, str] | None = None
    tolerations: list[dict[str, Any]] | None = None
    affinity: dict[str, Any] | None = None
    priority_class_name: ObjectName | None = None
    scheduler_name: ObjectName | None = None
    gang: Gang | None = None


class PodTemplateMeta(_Model):
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}


class PodTemplate(_Model):
    metadata: PodTemplateMeta = PodTemplateMeta()
    spec: dict[str, Any] = {}

    @field_validator("spec")
    @classmethod
    def _pod_spec(cls, value: dict[str, Any]) -> dict[str, Any]:
        # The CRD refuses the same at kubectl apply; this covers the local runner.
        found = podspec.problems(value, "spec.podTemplate.spec")
        if found:
            raise ValueError("; ".join(found[:5]))
        return value


class Metrics(_Model):
    enabled: StrictBool = True
    port: Annotated[int, Field(ge=1024, le=65535)] = 9400
    image: Image | None = None


# Fields of TrainingJobSpec that shape the worker pods (see worker_fingerprint), besides
# the worker range minReplicas..maxReplicas, kept as its value under NNODES_KEY.
NNODES_KEY = "minReplicas..maxReplicas"
WORKER_SHAPING = frozenset(
    {
        "image",
        "image_pull_policy",
        "entrypoint",
        "env",
        "resources",
        "nproc_per_node",
        "rendezvous",
        "checkpoint",
        "termination_grace_period_seconds",
        "scheduling",
        "pod_template",
        "metrics",
    }
)


class TrainingJobSpec(_Model):
    image: Image
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    entrypoint: Entrypoint
    env: list[EnvVar] = []
    resources: Resources = Resources()
    nproc_per_node: Annotated[int, Field(ge=1, le=64)] | None = None
    replicas: Annotated[int, Field(ge=1, le=1024)] = 1
    min_replicas: Annotated[int, Field(ge=1, le=1024)] | None = None
    max_replicas: Annotated[int, Field(ge=1, le=1024)] | None = None
    rendezvous: Rendezvous = Rendezvous()
    failure_policy: FailurePolicy = FailurePolicy()
    run_policy: RunPolicy = RunPolicy()
    suspend: StrictBool = False  # "yes" is refused, as by the CRD
    checkpoint: Checkpoint = Checkpoint()
    termination_grace_period_seconds: Annotated[int, Field(ge=0, le=DAY)] = 60
    scheduling: Scheduling = Scheduling()
    pod_template: PodTemplate = PodTemplate()
    metrics: Metrics = Metrics()

    @model_validator(mode="after")
    def _bounds(self) -> TrainingJobSpec:
        if self.min_replicas is not None and self.min_replicas > self.replicas:
            raise ValueError("spec.minReplicas must be <= spec.replicas")
        if self.max_replicas is not None and self.replicas > self.max_replicas:
            raise ValueError("spec.replicas must be <= spec.maxReplicas")
        return self

    def worker_fingerprint(self) -> dict[str, str]:
        """A short hash of every field that shapes the worker pods, by YAML name. An edit
        to one of them restarts all workers together (never old and new side by side);
        replicas, suspend, failurePolicy and runPolicy apply live and are left out."""
        data = self.model_dump(mode="json", by_alias=True, include=set(WORKER_SHAPING))
        out = {
            to_camel(name): hashlib.sha256(
                json.dumps(data.get(to_camel(name)), sort_keys=True).encode()
            ).hexdigest()[:12]
            for name in sorted(WORKER_SHAPING)
        }
        # torchrun's --nnodes as the workers get it: with minReplicas or maxReplicas
        # unset it follows replicas, so scaling a fixed-size job restarts it too.
        out[NNODES_KEY] = f"{self.min_nodes}:{self.max_nodes}"
        return out

    # Derived values live here, once, so the builders and the runner agree.
    @property
    def min_nodes(self) -> int:
        return self.min_replicas if self.min_replicas is not None else self.replicas

    @property
    def max_nodes(self) -> int:
        return self.max_replicas if self.max_replicas is not None else self.replicas

    @property
    def procs_per_node(self) -> int:
        if self.nproc_per_node is not None:
            return self.nproc_per_node
        return self.resources.gpus or 1

    @property
    def agent_max_restarts(self) -> int:
        per_agent = self.rendezvous.max_restarts_per_agent
        return per_agent if per_agent is not None else self.failure_policy.backoff_limit

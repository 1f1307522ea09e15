"""What must hold before a job's first pod is created: Pod Security, GPU capacity, the
checkpoint claim, and the API server's answer to a dry run.
"""

from __future__ import annotations

from trainop.api import constants as c
from trainop.api.spec import TrainingJobSpec
from trainop.core import build, podsecurity
from trainop.core.config import OperatorConfig
from trainop.core.plan.capacity import gpu_capacity_problem
from trainop.core.plan.model import (
    REASON_NO_CAPACITY,
    Observed,
)


def startup_problem(
    spec: TrainingJobSpec, obs: Observed, config: OperatorConfig
) -> tuple[str, str] | None:
    """What the schema cannot know. Checked before anything is created for the job."""
    insecure = pod_security_problem(spec, obs, config)
    if insecure is not None:
        return ("PodSecurity", insecure)
    if config.capacity_check and spec.resources.gpus and obs.nodes is not None:
        short = gpu_capacity_problem(spec, obs, obs.nodes.values(), config)
        if short is not None:
            return (REASON_NO_CAPACITY, short)
    if obs.missing_pvc is not None:
        return (
            "CheckpointVolumeNotFound",
            f"PersistentVolumeClaim {obs.missing_pvc!r} of spec.checkpoint.volume does not exist "
            f"in namespace {obs.job.namespace}; create it or change spec.checkpoint.volume",
        )
    if obs.admission_error is not None:
        return (
            "AdmissionRejected",
            f"the API server refuses the job's pods: {obs.admission_error}; "
            "fix the spec field (or the missing object) it names",
        )
    return None


def pod_security_problem(
    spec: TrainingJobSpec, obs: Observed, config: OperatorConfig
) -> str | None:
    """Why the job's worker pods break its namespace's Pod Security level, if they do."""
    ns = obs.job.namespace
    level = podsecurity.level_for(ns, config.pod_security, config.pod_security_namespaces)
    pod = build.build_worker_pod(obs.job, spec, 0, 0, config)["spec"]
    found = podsecurity.violations(pod, level, checkpoint_volume=c.CHECKPOINT_VOLUME)
    if not found:
        return None
    return (
        f"{'; '.join(found[:5])}: not allowed at Pod Security level {level.value} in "
        f"namespace {ns}. Change the field, or have a cluster admin allow more for this "
        f"namespace (helm value security.podSecurityNamespaces.{ns})"
    )

"""The pure core's decision for one job: `compute_plan(observed, now, config) -> Plan`.

One module per policy; compute_plan (pipeline.py) runs them as stages:

- model.py: the observation, the plan, the draft, condition and reason names;
- checks.py and capacity.py: what must hold before a job's first pod (Pod Security,
  GPU capacity, the checkpoint claim, the API server's dry run);
- restarts.py: failures against the one restart budget;
- updates.py: spec edits on a running job;
- children.py: what to create and delete, counts, clean-up and TTL;
- phases.py: phase, conditions, pending too long and progress;
- queue.py: a job queued in Kueue waits for, runs within and gives back its admission.
"""

from trainop.core.plan.model import (
    COND_PENDING_TOO_LONG,
    COND_PODS_SCHEDULED,
    COND_QUEUE_ADMITTED,
    COND_RECONCILE_ERROR,
    COND_SPEC_APPLIED,
    COND_SPEC_VALID,
    IN_PLACE,
    REASON_NO_CAPACITY,
    Event,
    Observed,
    Plan,
    PodDelete,
    WorkloadWrite,
)
from trainop.core.plan.pipeline import compute_plan, planning_failed

__all__ = [
    "COND_PENDING_TOO_LONG",
    "COND_PODS_SCHEDULED",
    "COND_QUEUE_ADMITTED",
    "COND_RECONCILE_ERROR",
    "COND_SPEC_APPLIED",
    "COND_SPEC_VALID",
    "IN_PLACE",
    "REASON_NO_CAPACITY",
    "Event",
    "Observed",
    "Plan",
    "PodDelete",
    "WorkloadWrite",
    "compute_plan",
    "planning_failed",
]

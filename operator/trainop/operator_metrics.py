"""The operator's own Prometheus metrics (names are the single source for dashboards)."""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Gauge, Histogram

from trainop.api.spec import Reason
from trainop.core.plan import IN_PLACE

JOBS: Final = Gauge(
    "trainop_operator_jobs",
    "TrainingJobs known to this operator, by phase.",
    ["phase"],
)
# Per job, so alerts and dashboards can name the job. The labels avoid `namespace`
# and `job`, which Prometheus' own target labels own.
JOB_PHASE: Final = Gauge(
    "trainop_operator_job_phase",
    "1 for the phase each TrainingJob is in (one series per job and phase).",
    ["trainingjob_namespace", "trainingjob", "phase"],
)
JOB_RESTARTS: Final = Gauge(
    "trainop_operator_job_restarts",
    "Restarts a TrainingJob has used from its budget (status.restarts).",
    ["trainingjob_namespace", "trainingjob"],
)
JOB_RESTART_BUDGET: Final = Gauge(
    "trainop_operator_job_restart_budget",
    "The restart budget of a TrainingJob (spec.failurePolicy.backoffLimit).",
    ["trainingjob_namespace", "trainingjob"],
)
RECONCILE_SECONDS: Final = Histogram(
    "trainop_operator_reconcile_duration_seconds",
    "Time of one reconcile of one TrainingJob, API calls included.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
# 1 s is the line between on time and late (workqueue.LATE_SECONDS).
WAIT_BUCKETS: Final = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
QUEUE_WAIT: Final = Histogram(
    "trainop_operator_queue_wait_seconds",
    "Time from a watch event (or a due requeue) for a TrainingJob to the start of the "
    "reconcile that sees it; above 1 s an event counts as late.",
    buckets=WAIT_BUCKETS,
)
QUEUE_DELAY: Final = Histogram(
    "trainop_operator_queue_delay_seconds",
    "The part of trainop_operator_queue_wait_seconds not spent behind the job's own "
    "reconcile in progress: what the queue and the event loop alone add.",
    buckets=WAIT_BUCKETS,
)
RESTARTS: Final = Counter(
    "trainop_operator_restarts_total",
    "Worker restarts by failure reason and whether they were counted; reason InPlace "
    "counts the worker-group restarts torchrun made in place (always counted).",
    ["reason", "counted"],
)
# Every label pair a restart can have, exported at 0 from start-up: a series born at 1
# hides its first restart from increase(), so a storm needed one restart more to fire.
# Any reason may be counted or free (failurePolicy.rules decide), hence both values.
RESTART_LABELS: Final = (
    *((reason.value, counted) for reason in Reason for counted in ("true", "false")),
    (IN_PLACE, "true"),
)
for _labels in RESTART_LABELS:
    RESTARTS.labels(*_labels)
API_REQUESTS: Final = Counter(
    "trainop_operator_api_requests_total",
    "Kubernetes API requests made by the operator, by verb and resource.",
    ["verb", "resource"],
)
API_ERRORS: Final = Counter(
    "trainop_operator_api_errors_total",
    "Kubernetes API requests that failed, by verb, resource and HTTP status code.",
    ["verb", "resource", "code"],
)
API_FENCED: Final = Counter(
    "trainop_operator_api_writes_fenced_total",
    "Writes not sent because this replica could no longer prove it holds the leader lease.",
    ["verb", "resource"],
)
RECONCILE_ERRORS: Final = Counter(
    "trainop_operator_reconcile_errors_total",
    "Reconciles that ended in an error and were retried.",
)

"""Operator-wide settings that shape the objects the core builds."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from trainop.core.podsecurity import Level


@dataclass(frozen=True)
class OperatorConfig:
    # Image of the metrics sidecar when a job does not name one.
    exporter_image: str = "ghcr.io/trainop/trainop:0.1.0"
    # A node NotReady this long has lost its pods: they are force-deleted and replaced.
    node_lost_seconds: float = 60.0
    # A worker pod still not started after this long gets the PendingTooLong condition
    # and a Warning Event: long enough for a large image pull, short enough to notice.
    pending_timeout_seconds: float = 300.0
    # Refuse to create a job's pods while no ready node could hold one (InsufficientGPUCapacity).
    # Off for clusters that autoscale from zero: an autoscaler adds nodes only for pending
    # pods, so the check would hold such a job forever; the scheduler's reason then shows.
    capacity_check: bool = True
    # How often each job is looked at again without any event (a safety net: events and
    # the plan's own requeue times drive the work). Paced, and from the watch cache it
    # reads no API, so 1,000 idle jobs cost a few plans a second.
    resync_seconds: float = 300.0
    # Concurrent creates/deletes per reconcile: fast for big jobs, gentle on the API server.
    write_concurrency: int = 32
    # Jobs creating several objects at once (a new job, a coordinated restart) that may
    # write at the same time; the rest wait their turn. Without it a burst of N new
    # jobs advanced in lockstep (every job's Service, then every job's pods) and each
    # finished only at the end of the burst, its events waiting all along.
    write_lanes: int = 8
    # The Pod Security Standard every worker pod must meet (core/podsecurity.py), and
    # the namespaces a cluster admin gave another level (e.g. privileged for RDMA).
    pod_security: Level = Level.BASELINE
    pod_security_namespaces: Mapping[str, Level] = field(default_factory=dict)
    # A NetworkPolicy per job: only its own pods reach its store and workers.
    network_policy: bool = True
    # Namespace whose pods (Prometheus) may scrape the workers' metrics port; "" = any.
    metrics_namespace: str = ""

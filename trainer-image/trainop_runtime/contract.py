"""The operator <-> trainer contract, in one place.

The operator (``trainop.core``) writes these env vars and mounts these paths
into every worker pod; the runtime (``trainop_runtime``) and the metrics
sidecar (``trainop.exporter``) read them. Purely declarative: no I/O here.
"""

from __future__ import annotations

from typing import Final

# --- torchrun's own knobs. torchrun reads PET_<FLAG> as the default of --<flag>,
# so a user who runs plain `torchrun` in the container still gets the operator's
# rendezvous settings.
PET_NNODES: Final = "PET_NNODES"  # "min:max"
PET_NPROC_PER_NODE: Final = "PET_NPROC_PER_NODE"
PET_RDZV_BACKEND: Final = "PET_RDZV_BACKEND"
PET_RDZV_ENDPOINT: Final = "PET_RDZV_ENDPOINT"  # host:port of the job's store pod
PET_RDZV_ID: Final = "PET_RDZV_ID"
PET_RDZV_CONF: Final = "PET_RDZV_CONF"  # "k=v,k=v"
PET_MAX_RESTARTS: Final = "PET_MAX_RESTARTS"
PET_MONITOR_INTERVAL: Final = "PET_MONITOR_INTERVAL"

RDZV_BACKEND: Final = "c10d"
DEFAULT_RDZV_PORT: Final = 29400
# Every agent is a client of the dedicated store pod, so losing any worker pod,
# the first included, never takes the rendezvous store down with it.
RDZV_CONF_IS_HOST: Final = "is_host=false"
# Heartbeats of each agent in the store: a dead member leaves the rendezvous after
# interval x attempts (5 s, against torch's 5 s x 3). Fewer attempts (1 s x 2) let a
# loaded agent miss beats and be dropped as dead by a rejoining one, splitting the job
# (bench/recovery/README.md), so 5 attempts is the floor.
RDZV_KEEP_ALIVE_INTERVAL_SECONDS: Final = 1
RDZV_KEEP_ALIVE_MAX_ATTEMPT: Final = 5
# Extra wait for more members once the minimum has joined; spec.rendezvous
# .lastCallTimeoutSeconds overrides it per job (the CRD default equals this).
RDZV_LAST_CALL_TIMEOUT_SECONDS: Final = 5
RDZV_JOIN_TIMEOUT_SECONDS: Final = 600


def rdzv_conf(
    *,
    join_timeout: int = RDZV_JOIN_TIMEOUT_SECONDS,
    last_call_timeout: int = RDZV_LAST_CALL_TIMEOUT_SECONDS,
) -> str:
    """torchrun's --rdzv-conf ("k=v,k=v") with the agreed heartbeat settings."""
    parts = [
        RDZV_CONF_IS_HOST,
        f"join_timeout={join_timeout}",
        f"last_call_timeout={last_call_timeout}",
        f"keep_alive_interval={RDZV_KEEP_ALIVE_INTERVAL_SECONDS}",
        f"keep_alive_max_attempt={RDZV_KEEP_ALIVE_MAX_ATTEMPT}",
    ]
    return ",".join(parts)


# --- trainop's own env.
ENV_JOB_NAME: Final = "TRAINOP_JOB_NAME"
ENV_JOB_NAMESPACE: Final = "TRAINOP_JOB_NAMESPACE"
ENV_POD_NAME: Final = "TRAINOP_POD_NAME"
ENV_NODE_NAME: Final = "TRAINOP_NODE_NAME"  # the pod's node (spec.nodeName), for the sidecar
ENV_RDZV_PORT: Final = "TRAINOP_RDZV_PORT"  # the store pod listens here
ENV_CHECKPOINT_DIR: Final = "TRAINOP_CHECKPOINT_DIR"
ENV_CHECKPOINT_EVERY_STEPS: Final = "TRAINOP_CHECKPOINT_EVERY_STEPS"
ENV_CHECKPOINT_EVERY_SECONDS: Final = "TRAINOP_CHECKPOINT_EVERY_SECONDS"
ENV_RUN_DIR: Final = "TRAINOP_RUN_DIR"  # shared with the sidecar (emptyDir)
ENV_GRACE_SECONDS: Final = "TRAINOP_GRACE_SECONDS"  # pod terminationGracePeriodSeconds
ENV_ENTRY_MODULE: Final = "TRAINOP_ENTRY_MODULE"
ENV_ENTRY_SCRIPT: Final = "TRAINOP_ENTRY_SCRIPT"

# --- files inside ENV_RUN_DIR (default below), written atomically (tmp + rename).
DEFAULT_RUN_DIR: Final = "/var/run/trainop"
PROGRESS_FILE: Final = "progress.json"  # written by each pod's LOCAL_RANK 0
GPUS_FILE: Final = "gpus.json"  # {"uuids": [...]}: the GPUs the trainer container sees
DEFAULT_CHECKPOINT_DIR: Final = "/checkpoints"

# Progress file keys (JSON object). Absent keys mean "not reported yet".
P_STEP: Final = "step"  # last completed optimizer step (int)
P_TOTAL_STEPS: Final = "totalSteps"  # int or null
P_SAMPLES: Final = "samples"  # samples processed, all ranks (int)
P_LOSS: Final = "loss"  # float
P_STEP_SECONDS: Final = "stepSeconds"  # wall time of the last step
P_SAMPLES_PER_SECOND: Final = "samplesPerSecond"
P_RESTARTS: Final = "restarts"  # worker-group restarts seen by this pod's agent
P_WORLD_SIZE: Final = "worldSize"
P_CHECKPOINT_STEP: Final = "checkpointStep"
P_CHECKPOINT_TIME: Final = "checkpointTime"  # unix seconds
P_TIME: Final = "time"  # unix seconds of this report

# --- container entrypoints (module names, run as `python -m ...`).
LAUNCH_MODULE: Final = "trainop_runtime.launch"
STORE_MODULE: Final = "trainop_runtime.store"

# The launcher exits with the first failed worker's exit code (128+N for a
# signal), so the operator's failure rules see the real cause, not torchrun's 1.
# It also writes a one-line reason to the termination log.
TERMINATION_LOG: Final = "/dev/termination-log"

# --- additions by the trainer runtime (issue 4).
# Overrides TERMINATION_LOG, so the launcher can run outside a pod (tests, laptops).
ENV_TERMINATION_LOG: Final = "TRAINOP_TERMINATION_LOG"
# Set by the launcher for its workers, fresh for every rendezvous round and the same
# on every agent of that round: the key prefix that keeps a new process group from
# reading a dead incarnation's addresses in the long-lived store.
ENV_ATTEMPT_ID: Final = "TRAINOP_ATTEMPT_ID"
# One JSON object per line, appended by the launcher: rendezvous start/end times,
# worker-group restarts and the final outcome (read by bench/recovery and by humans).
AGENT_EVENTS_FILE: Final = "agent-events.jsonl"
# A worker exits with this when a peer was told to stop (SIGTERM) and it was not:
# the job checkpointed on purpose, and this agent should re-rendezvous. Below 128 so
# nobody mistakes it for a signal; EX_TEMPFAIL from sysexits.h.
EXIT_PEER_STOPPED: Final = 75
# The launcher exits with this when its agent lost the rendezvous store (torch's
# RendezvousConnectionError): every pod of the job fails at once for one cause, the
# store, so the operator must not charge the budget once per pod. EX_UNAVAILABLE.
EXIT_RENDEZVOUS_LOST: Final = 69

"""Names of the API and of what the operator stamps on its children."""

from __future__ import annotations

from typing import Final

GROUP: Final = "trainop.dev"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
KIND: Final = "TrainingJob"
PLURAL: Final = "trainingjobs"

# Labels on every child. The job label is also the Service selector.
LABEL_JOB: Final = f"{GROUP}/job-name"
LABEL_ROLE: Final = f"{GROUP}/role"
LABEL_SLOT: Final = f"{GROUP}/slot"
LABEL_JOB_GENERATION: Final = f"{GROUP}/job-generation"
ROLE_WORKER: Final = "worker"
ROLE_STORE: Final = "store"

# The sidecar pushes a compact progress JSON here; the operator aggregates it.
ANNOTATION_PROGRESS: Final = f"{GROUP}/progress"
# What the metrics sidecar adds to that annotation, totals since the sidecar started
# (the operator sums them into status.usage across the pods a job ever had).
USAGE_GPU_SECONDS: Final = "gpuSeconds"
USAGE_IDLE_GPU_SECONDS: Final = "idleGpuSeconds"
USAGE_ENERGY_JOULES: Final = "energyJoules"
USAGE_KEYS: Final = (USAGE_GPU_SECONDS, USAGE_IDLE_GPU_SECONDS, USAGE_ENERGY_JOULES)
# Kueue's queue label: a job that carries it waits for its Workload to be admitted.
LABEL_KUEUE_QUEUE: Final = "kueue.x-k8s.io/queue-name"
# Kueue's Workload API (the version v0.17 stores) and the name its configuration lists
# under integrations.externalFrameworks for trainop's jobs.
KUEUE_GROUP: Final = "kueue.x-k8s.io"
KUEUE_API_VERSION: Final = f"{KUEUE_GROUP}/v1beta2"
KUEUE_FRAMEWORK: Final = f"{KIND}.{VERSION}.{GROUP}"
# Gang scheduling: the two PodGroup APIs and how each finds a pod's group.
VOLCANO_API_VERSION: Final = "scheduling.volcano.sh/v1beta1"
VOLCANO_GROUP_ANNOTATION: Final = "scheduling.k8s.io/group-name"
COSCHEDULING_API_VERSION: Final = "scheduling.x-k8s.io/v1alpha1"
COSCHEDULING_GROUP_LABEL: Final = "scheduling.x-k8s.io/pod-group"

FIELD_MANAGER: Final = "trainop"
TRAINER_CONTAINER: Final = "trainer"
EXPORTER_CONTAINER: Final = "metrics"
STORE_CONTAINER: Final = "store"
RUN_VOLUME: Final = "trainop-run"
CHECKPOINT_VOLUME: Final = "checkpoints"

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
# Kueue's queue label: a job that carries it starts suspended until admitted.
LABEL_KUEUE_QUEUE: Final = "kueue.x-k8s.io/queue-name"

FIELD_MANAGER: Final = "trainop"
TRAINER_CONTAINER: Final = "trainer"
EXPORTER_CONTAINER: Final = "metrics"
STORE_CONTAINER: Final = "store"
RUN_VOLUME: Final = "trainop-run"
CHECKPOINT_VOLUME: Final = "checkpoints"

"""Push a compact copy of progress.json, and the pod's GPU usage so far, onto the
sidecar's own pod annotation.

The operator lists worker pods on every reconcile anyway, so this is how training
progress reaches TrainingJob status and `kubectl get tj` with no operator->pod
traffic. It talks to the API server as the pod's service account (in-cluster
token and CA), which needs `patch` on pods in its namespace; without it the push
is switched off with one clear log line and the metrics keep flowing.
"""

from __future__ import annotations

import json
import logging
import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainop.api.constants import ANNOTATION_PROGRESS
from trainop_runtime import contract

log = logging.getLogger("trainop.exporter.annotate")

ANNOTATION = ANNOTATION_PROGRESS
ENV_SA_DIR = "TRAINOP_SA_DIR"  # for tests; pods use the standard mount
ENV_PROGRESS_SECONDS = "TRAINOP_EXPORTER_PROGRESS_SECONDS"
DEFAULT_SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
DEFAULT_EVERY_SECONDS = 15.0
# What the operator reads (trainop.core.plan.phases.record_progress); nothing else is copied.
KEYS = (
    contract.P_STEP,
    contract.P_TOTAL_STEPS,
    contract.P_SAMPLES,
    contract.P_LOSS,
    contract.P_SAMPLES_PER_SECOND,
    contract.P_STEP_SECONDS,  # the default hang bound is 10 of them (core/plan/hang.py)
    contract.P_RESTARTS,
    contract.P_WORLD_SIZE,
    contract.P_CHECKPOINT_STEP,
    contract.P_CHECKPOINT_TIME,
    contract.P_TIME,
)


def compact_progress(report: Mapping[str, Any]) -> dict[str, Any]:
    """The annotation value: only the known keys, floats rounded. Purely computational."""
    out: dict[str, Any] = {}
    for key in KEYS:
        value = report.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        out[key] = round(value, 4) if isinstance(value, float) else value
    return out


@dataclass
class ProgressAnnotator:
    url: str
    sa_dir: Path
    run_dir: Path
    every: float = DEFAULT_EVERY_SECONDS
    enabled: bool = True
    _last: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str], run_dir: Path) -> ProgressAnnotator | None:
        """None outside a pod, or without the pod's identity: nothing to annotate."""
        host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
        ns, pod = env.get(contract.ENV_JOB_NAMESPACE), env.get(contract.ENV_POD_NAME)
        if not (host and port and ns and pod):
            return None
        every = float(env.get(ENV_PROGRESS_SECONDS, DEFAULT_EVERY_SECONDS))
        host = f"[{host}]" if ":" in host else host
        url = f"https://{host}:{port}/api/v1/namespaces/{ns}/pods/{pod}"
        return cls(
            url=url, sa_dir=Path(env.get(ENV_SA_DIR, DEFAULT_SA_DIR)), run_dir=run_dir, every=every
        )

    def push_once(self, usage: Mapping[str, float] | None = None) -> bool:
        """Patch the annotation if progress or `usage` (the sidecar's UsageMeter totals)
        changed. True when a patch was accepted."""
        if not self.enabled:
            return False
        try:
            report = json.loads((self.run_dir / contract.PROGRESS_FILE).read_text())
        except (OSError, ValueError):
            # No report yet, one being replaced, or a script that never reports
            # progress: its GPU usage still counts.
            report = {}
        if not isinstance(report, dict):
            report = {}
        value = json.dumps(
            {**compact_progress(report), **(usage or {})}, separators=(",", ":"), sort_keys=True
        )
        if value in (self._last, "{}"):
            return False
        body = json.dumps({"metadata": {"annotations": {ANNOTATION: value}}}).encode()
        try:
            token = (self.sa_dir / "token").read_text().strip()  # re-read: tokens rotate
            ctx = ssl.create_default_context(cafile=str(self.sa_dir / "ca.crt"))
            # The URL is always https://<in-cluster API server>, built in from_env.
            request = urllib.request.Request(  # noqa: S310
                self.url,
                data=body,
                method="PATCH",
                headers={
                    "Authorization": f"Bearer {token}",
                    "Content-Type": "application/merge-patch+json",
                },
            )
            with urllib.request.urlopen(request, context=ctx, timeout=5):  # noqa: S310
                pass
        except urllib.error.HTTPError as err:
            if err.code in (401, 403):
                self.enabled = False
                log.warning(
                    "cannot patch my pod (%s %s): progress will not show in TrainingJob "
                    "status. Grant the pod's service account `patch` on pods (the chart's "
                    "trainop-progress-reporter ClusterRole); metrics are unaffected",
                    err.code,
                    err.reason,
                )
            else:
                log.warning("progress annotation failed: %s %s", err.code, err.reason)
            return False
        except (OSError, ValueError) as err:
            log.warning("progress annotation failed: %s", err)
            return False
        self._last = value
        return True

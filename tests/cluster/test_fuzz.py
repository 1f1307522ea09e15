"""200 seeded mutations of TrainingJobs on the real control plane: no job is wedged, the
operator logs no traceback and keeps running, and nothing is left half-created.

100 mutated specs are created and 100 mutations are patched onto running jobs, one
field each, with values an attacker or a careless user would write. Whatever the API
server accepts, the operator must settle: its status describes the latest generation.
Seeded, so a failure replays exactly (TRAINOP_FUZZ_SEED picks another run).
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.conftest import Cluster, Operator, wait_for
from tests.cluster.test_operator import until_running
from tests.hostile import BASE, merge

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

SEED = int(os.environ.get("TRAINOP_FUZZ_SEED", "20261203"))
PATHS = [
    "image", "imagePullPolicy", "entrypoint.module", "entrypoint.script", "entrypoint.command",
    "entrypoint.args", "env", "resources.gpus", "resources.cpu", "resources.memory",
    "resources.gpuResourceName", "nprocPerNode", "replicas", "minReplicas", "maxReplicas",
    "rendezvous.port", "rendezvous.joinTimeoutSeconds", "rendezvous.lastCallTimeoutSeconds",
    "rendezvous.maxRestartsPerAgent", "failurePolicy.backoffLimit",
    "failurePolicy.backoffSeconds", "failurePolicy.maxBackoffSeconds", "failurePolicy.rules",
    "runPolicy.activeDeadlineSeconds", "runPolicy.ttlSecondsAfterFinished",
    "runPolicy.cleanPodPolicy", "suspend", "checkpoint.volume", "checkpoint.mountPath",
    "checkpoint.everySteps", "checkpoint.everySeconds", "terminationGracePeriodSeconds",
    "scheduling.nodeSelector", "scheduling.tolerations", "scheduling.affinity",
    "scheduling.priorityClassName", "scheduling.schedulerName", "podTemplate.spec.hostIPC",
    "podTemplate.spec.containers", "podTemplate.spec.restartPolicy", "podTemplate.metadata.labels",
    "metrics.enabled", "metrics.port", "metrics.image", "replcas", "podTemplate.spec.nodeSelecter",
]  # fmt: skip
VALUES: list[Any] = [
    0, -1, 1, 2, 3, 7, 2**31, 2**63 - 1, -(2**63), 10**12, 300_000_000_000, 1.5, "", " ",
    "a b", "$(id)", "`id`", ";rm -rf /", "x" * 5000, "ünïcode", "\n", True, False, None, [],
    {}, [1, 2], ["--rdzv-endpoint=evil"], {"a": 1}, {"claimName": "nope"}, "1Gi", "500m",
    "Never", "Always", "nvidia.com/gpu", "ghcr.io/x/y:1", "trainer:2", "None", "RestartPod",
    [{"action": "FailJob", "exitCodes": [3]}], [{"name": "trainer", "image": "other:1"}],
    [{"key": "k", "operator": "Exists"}], {"persistentVolumeClaim": {"claimName": "ckpt"}},
]  # fmt: skip


# Values the schema accepts, so that half the mutations reach the operator.
PLAUSIBLE: dict[str, list[Any]] = {
    "image": ["trainer:2", "ghcr.io/a/b@sha256:" + "f" * 64],
    "entrypoint.args": [["--steps", "5"], []],
    "env": [[{"name": "NCCL_DEBUG", "value": "INFO"}], [{"name": "X", "valueFrom": {}}]],
    "resources.gpus": [0, 1, 8, 64],
    "resources.cpu": ["250m", 2],
    "resources.memory": ["1Gi"],
    "replicas": [1, 3, 4],
    "minReplicas": [1],
    "maxReplicas": [4, 1024],
    "rendezvous.lastCallTimeoutSeconds": [0, 3600],
    "failurePolicy.backoffLimit": [0, 1000],
    "failurePolicy.rules": [[{"action": "FailJob", "exitCodes": [1]}], []],
    "runPolicy.activeDeadlineSeconds": [1, 31536000],
    "runPolicy.ttlSecondsAfterFinished": [0, 31536000],
    "suspend": [True, False],
    "checkpoint.volume": [{"persistentVolumeClaim": {"claimName": "nope"}}, {"emptyDir": {}}],
    "checkpoint.everySeconds": [1, 604800],
    "terminationGracePeriodSeconds": [0, 86400],
    "scheduling.nodeSelector": [{"pool": "none"}, {}],
    "scheduling.tolerations": [[{"key": "k", "operator": "Exists"}]],
    "scheduling.priorityClassName": ["no-such-class"],
    "scheduling.schedulerName": ["volcano"],
    "podTemplate.spec.containers": [
        [{"name": "trainer", "ports": [{"containerPort": 99999}]}],
        [{"name": "extra", "image": "busybox:1"}],
    ],
    "podTemplate.spec.hostIPC": [True],
    "metrics.enabled": [False],
    "metrics.port": [1024, 65535],
}


def mutation(rng: random.Random) -> dict[str, Any]:
    """One field set to one value, as a merge patch."""
    name = rng.choice(PATHS)
    path = name.split(".")
    pool = PLAUSIBLE.get(name) if rng.random() < 0.5 else None
    patch: dict[str, Any] = {path[-1]: rng.choice(pool or VALUES)}
    for part in reversed(path[:-1]):
        patch = {part: patch}
    return patch


def _job(name: str, spec: dict[str, Any]) -> str:
    return json.dumps(
        {"apiVersion": "trainop.dev/v1alpha1", "kind": "TrainingJob",
         "metadata": {"name": name}, "spec": spec}
    )  # fmt: skip


def _unsettled(c: Cluster, ns: str) -> list[str]:
    """Jobs whose status does not yet describe their latest spec."""
    jobs = c.list("trainingjobs", ns)
    return [
        f"{j['metadata']['name']}: generation {j['metadata']['generation']}, "
        f"status {json.dumps(j.get('status'))[:300]}"
        for j in jobs
        if (j.get("status") or {}).get("observedGeneration") != j["metadata"]["generation"]
        or not (j.get("status") or {}).get("phase")
    ]


def test_200_seeded_mutations_leave_no_wedged_job_and_no_traceback(
    operator: Operator, ns: str
) -> None:
    c = operator.cluster
    rng = random.Random(SEED)  # noqa: S311  (replayable, not secret)
    log_start = operator.log.stat().st_size
    # No GPUs: the jobs that keep running must not wait for the mutated ones' GPUs.
    base = merge(json.loads(json.dumps(BASE)), {"replicas": 1, "resources": {"gpus": 0}})
    created = patched = 0
    for i in range(100):
        spec = merge(json.loads(json.dumps(base)), mutation(rng))
        out = c.kubectl("apply", "-n", ns, "-f", "-", input=_job(f"fz-{i:03d}", spec), check=False)
        created += "created" in out
    running = [f"run-{i}" for i in range(5)]
    for name in running:
        c.kubectl("apply", "-n", ns, "-f", "-", input=_job(name, {**base, "replicas": 2,
                  "minReplicas": 1, "maxReplicas": 4}))  # fmt: skip
    for name in running:
        until_running(c, ns, name, 2, timeout=60)
    for i in range(100):
        name = running[i % len(running)]
        out = c.kubectl(
            "patch", "trainingjob", name, "-n", ns, "--type=merge",
            "-p", json.dumps({"spec": mutation(rng)}), check=False,
        )  # fmt: skip
        patched += "patched" in out
    assert created + patched > 20, "the fuzzer should get past the schema now and then"
    wait_for("every job settled on its latest spec", lambda: not _unsettled(c, ns), timeout=120)
    said = operator.log.read_bytes()[log_start:].decode(errors="replace")
    assert "Traceback" not in said, said[said.find("Traceback") - 2000 :][:6000]
    assert operator.alive()
    # Nothing half-created: every pod and Service belongs to a job that exists.
    jobs = {j["metadata"]["uid"] for j in c.list("trainingjobs", ns)}
    for kind in ("pods", "services"):
        for obj in c.list(kind, ns):
            owners = {o["uid"] for o in obj["metadata"].get("ownerReferences") or []}
            assert owners & jobs, f"{kind} {obj['metadata']['name']} has no job"
    report = os.environ.get("TRAINOP_FUZZ_REPORT")
    if report:
        phases = [(j.get("status") or {}).get("phase") for j in c.list("trainingjobs", ns)]
        figures = {
            "seed": SEED,
            "created": created,
            "patched": patched,
            "phases": {p: phases.count(p) for p in sorted(set(map(str, phases)))},
        }
        Path(report).write_text(json.dumps(figures))
    c.kubectl("delete", "trainingjobs", "--all", "-n", ns, "--wait=false")

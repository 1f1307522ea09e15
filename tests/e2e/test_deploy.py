"""The path users take, for real: build the images, `helm install` the chart, `kubectl
apply` a TrainingJob, and pods train on a real node (containerd + runc) while the real
Prometheus scrapes the sidecar. Then a worker process is SIGKILLed (in-place recovery,
budget counted), a worker pod is deleted (a new pod joins and training resumes from the
checkpoint on a hostPath that outlives pods), the job succeeds, and `helm uninstall`
leaves the CRD and the TrainingJob as the README says.

Figures (image sizes, apply -> first step, kill -> next step) are printed and written
to $TRAINOP_E2E_REPORT when set; tests/cluster/README.md quotes them."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.kube import Release, install
from tests.cluster import kueue as kq
from tests.cluster.conftest import (
    Operator,
    localcluster,
    wait_established,
    wait_for,
    wait_until,
)
from tests.e2e.images import ROOT, Images, RealCluster
from tests.exporter.helpers import http_get, required_tool
from tests.procs import stop_group

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

JOB = "e2e"
NODE = "trainop-node-0"
NODE_LABEL = "trainop.dev/real-node"
STEPS = 400
ON_THE_REAL_NODE = {
    "nodeSelector": {NODE_LABEL: "true"},
    "tolerations": [{"key": NODE_LABEL, "operator": "Exists", "effect": "NoSchedule"}],
}
# Run in the trainer container: SIGKILL one training process (a zygote-forked worker
# under the launcher, PID 1), found the way the recovery bench finds them.
KILL_A_WORKER = """
import os, signal
from trainop_runtime.localjob import children_of, worker_pids
todo, found = [1], []
while todo and not found:
    pid = todo.pop(0)
    found = worker_pids(pid)
    todo += children_of(pid)
os.kill(found[0], signal.SIGKILL)
print(found[0])
"""


def events(path: Path) -> list[dict[str, Any]]:
    """tinylm's JSON-lines log (rank 0), on the hostPath checkpoint volume."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def steps_after(log: Path, t: float) -> list[dict[str, Any]]:
    return [e for e in events(log) if e["event"] == "step" and e["time"] > t]


class Prometheus:
    """The real Prometheus, scraping the sidecars at their pod IPs. Debian builds it
    without Kubernetes service discovery, so the targets are the pods' IPs and metrics
    ports as the API server lists them (a PodMonitor does this discovery in a cluster)."""

    def __init__(self, tmp: Path, pods: list[dict[str, Any]]) -> None:
        port = localcluster.free_port()
        self.base = f"http://127.0.0.1:{port}"
        targets = [
            f"{pod['status']['podIP']}:{p['containerPort']}"
            for pod in pods
            for container in pod["spec"].get("initContainers", []) + pod["spec"]["containers"]
            for p in container.get("ports", [])
            if p.get("name") == "metrics"
        ]
        config = {
            "global": {"scrape_interval": "2s", "scrape_timeout": "2s"},
            "scrape_configs": [
                {"job_name": "trainop-sidecars", "static_configs": [{"targets": targets}]}
            ],
        }
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = tmp / "prometheus.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [
                    required_tool("prometheus"),
                    f"--config.file={tmp / 'prometheus.yml'}",
                    f"--storage.tsdb.path={tmp / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        ready_by = time.monotonic() + 60
        while not self._ready():
            assert time.monotonic() < ready_by, self.log.read_text()[-3000:]
            time.sleep(0.3)

    def _ready(self) -> bool:
        try:
            return http_get(f"{self.base}/-/ready")[0] == 200
        except OSError:  # not listening yet
            return False

    def query(self, promql: str) -> list[dict[str, Any]]:
        status, body = http_get(f"{self.base}/api/v1/query?query={urllib.parse.quote(promql)}")
        assert status == 200, body
        return list(json.loads(body)["data"]["result"])

    def targets(self) -> list[dict[str, Any]]:
        return list(json.loads(http_get(f"{self.base}/api/v1/targets")[1])["data"]["activeTargets"])

    def stop(self) -> None:
        stop_group(self.proc, grace=10)


# What the run measured, reported at module teardown (bench/deploy quotes it).
figures: dict[str, Any] = {}


@pytest.fixture(scope="module")
def real(images: Images, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealCluster]:
    tmp = tmp_path_factory.mktemp("real-node")
    figures["image_build_seconds"] = round(images.build_seconds, 1)
    figures["image_bytes"] = dict(images.sizes)
    t0 = time.monotonic()
    cluster = RealCluster.up(tmp / "cluster")
    try:
        figures["cluster_with_real_node_up_seconds"] = round(time.monotonic() - t0, 1)
        t0 = time.monotonic()
        cluster.load_images()
        figures["image_load_into_containerd_seconds"] = round(time.monotonic() - t0, 1)
        yield cluster
    finally:
        _report()  # what was measured, even when a later stage failed
        cluster.down()


def _report() -> None:
    text = json.dumps(figures, indent=2, sort_keys=True)
    print(f"\ne2e figures:\n{text}")  # noqa: T201  (read with -s, or from the report file)
    if out := os.environ.get("TRAINOP_E2E_REPORT"):
        Path(out).write_text(text + "\n")


def _job(
    image: str, checkpoints: Path, name: str = JOB, steps: int = STEPS, replicas: int = 2
) -> dict[str, Any]:
    return {
        "apiVersion": "trainop.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {
            "image": image,
            "imagePullPolicy": "Never",
            "entrypoint": {
                "module": "trainop_runtime.examples.tinylm",
                "args": [
                    "--steps",
                    str(steps),
                    "--step-sleep",
                    "0.2",
                    "--log-jsonl",
                    "/checkpoints/events.jsonl",
                ],
            },
            "replicas": replicas,
            "minReplicas": 1,
            "maxReplicas": replicas,
            "resources": {"gpus": 0, "cpu": "500m", "memory": "2Gi"},
            "failurePolicy": {"backoffLimit": 8, "backoffSeconds": 1},
            # A hostPath outlives every pod: what a replacement resumes from.
            "checkpoint": {
                "everySteps": 10,
                "volume": {"hostPath": {"path": str(checkpoints), "type": "Directory"}},
            },
            "rendezvous": {"lastCallTimeoutSeconds": 1},
            "scheduling": {
                "nodeSelector": ON_THE_REAL_NODE["nodeSelector"],
                "tolerations": ON_THE_REAL_NODE["tolerations"],
            },
        },
    }


def test_helm_install_apply_train_scrape_recover_succeed_uninstall(  # noqa: PLR0915
    real: RealCluster, images: Images, tmp_path: Path
) -> None:
    c = real
    ns = "e2e-train"
    c.kubectl("create", "namespace", ns)
    wait_for("default service account", lambda: c.get_or_none("sa", "default", ns))

    # --- helm install: the operator from its image, with the chart's RBAC and securityContext.
    values = tmp_path / "values.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "image": {"pullPolicy": "Never"},
                **ON_THE_REAL_NODE,
                "progressReporter": {"bindings": [{"namespace": ns, "serviceAccount": "default"}]},
                # The checkpoints live on a hostPath (no volume provisioner on this node),
                # which Pod Security baseline forbids: the admin allows it for this namespace.
                "security": {"podSecurityNamespaces": {ns: "privileged"}},
            }
        )
    )
    release: Release = install(c, "-f", str(values))
    c.kubectl(
        "rollout",
        "status",
        f"deployment/{release.fullname}",
        "-n",
        release.namespace,
        "--timeout=180s",
    )
    (op_pod,) = c.list("pods", release.namespace, f"app.kubernetes.io/instance={release.name}")
    assert op_pod["spec"]["nodeName"] == NODE
    assert op_pod["status"]["containerStatuses"][0]["ready"] is True
    assert op_pod["spec"]["containers"][0]["image"] == images.operator
    assert op_pod["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True

    # --- kubectl apply: 2 workers of the trainer image, checkpoints on a hostPath.
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    checkpoints.chmod(0o777)  # the trainer runs as uid 1000
    log = checkpoints / "events.jsonl"
    applied = time.time()
    c.apply(_job(images.trainer, checkpoints), ns)
    first = wait_for("the first training step", lambda: steps_after(log, 0), timeout=300, every=0.5)
    figures["apply_to_first_step_seconds"] = round(first[0]["time"] - applied, 1)
    pods = c.list("pods", ns, f"trainop.dev/job-name={JOB}")
    assert {p["spec"]["nodeName"] for p in pods} == {NODE}
    assert {p["status"]["phase"] for p in pods} == {"Running"}
    assert len(pods) == 3  # two workers and the rendezvous store, all real containers

    # --- The real Prometheus scrapes both sidecars at their pod IPs.
    prom = Prometheus(tmp_path, pods)
    try:
        sel = f'trainingjob="{JOB}",trainingjob_namespace="{ns}"'
        stepping = wait_for(
            "training metrics from both sidecars",
            lambda: len(r := prom.query(f"trainop_training_step{{{sel}}} > 0")) == 2 and r,
            timeout=120,
            every=1,
        )
        worker_ips = {p["status"]["podIP"] for p in pods if "worker" in p["metadata"]["name"]}
        scraped = {t["labels"]["instance"].rsplit(":", 1)[0] for t in prom.targets()}
        assert worker_ips <= scraped, (worker_ips, scraped)
        assert {s["metric"]["trainingjob_pod"] for s in stepping} == {
            f"{JOB}-worker-0",
            f"{JOB}-worker-1",
        }
        gpu_up = prom.query(f"trainop_gpu_up{{{sel}}}")
        assert [s["value"][1] for s in gpu_up] == ["0", "0"]  # a CPU node: no GPU, and it says so
    finally:
        prom.stop()

    # --- Progress reaches status and `kubectl get tj`.
    tj = wait_until(
        "status.progress",
        lambda: c.get("trainingjob", JOB, ns),
        lambda j: j.get("status", {}).get("progress", {}).get("step", 0) > 0,
        timeout=60,
    )
    assert tj["status"]["phase"] == "Running"
    table = c.kubectl("get", "tj", JOB, "-n", ns)
    header, row = table.splitlines()[:2]
    assert "PROGRESS" in header
    assert row.split()[header.split().index("PROGRESS")] != "<none>", table

    # --- kill -9 one worker process: torchrun recovers in place, the budget counts it.
    before = c.get("trainingjob", JOB, ns)["status"].get("restarts", 0)
    killed_at = time.time()
    c.kubectl(
        "exec", f"{JOB}-worker-0", "-n", ns, "-c", "trainer", "--", "python", "-c", KILL_A_WORKER
    )
    restarted = wait_for(
        "a start after the kill",
        lambda: [e for e in events(log) if e["event"] == "start" and e["time"] > killed_at],
        timeout=120,
        every=0.5,
    )
    assert restarted[0]["resumed_step"] > 0  # from the checkpoint, not from scratch
    # The first step of the restarted group, not a step already in flight at the kill.
    after_kill = wait_for(
        "a step after the restart", lambda: steps_after(log, restarted[0]["time"]), 120, 0.5
    )
    figures["kill_to_next_step_seconds"] = round(after_kill[0]["time"] - killed_at, 2)
    tj = wait_until(
        "the in-place restart in status",
        lambda: c.get("trainingjob", JOB, ns),
        lambda j: j["status"].get("inPlaceRestarts", 0) >= 1,
        timeout=90,
    )
    assert tj["status"]["restarts"] >= before + 1
    figures["after_kill"] = {k: tj["status"].get(k) for k in ("restarts", "inPlaceRestarts")}
    # Nothing was replaced: the same two worker pods still run.
    assert {p["metadata"]["uid"] for p in c.list("pods", ns, "trainop.dev/role=worker")} == {
        p["metadata"]["uid"] for p in pods if "worker" in p["metadata"]["name"]
    }

    # --- kubectl delete pod: a new pod joins, training resumes from the checkpoint.
    old = c.get("pod", f"{JOB}-worker-1", ns)["metadata"]["uid"]
    deleted_at = time.time()
    c.kubectl("delete", "pod", f"{JOB}-worker-1", "-n", ns, "--wait=false")
    rejoined = wait_for(
        "a 2-worker start with the replacement",
        lambda: [
            e
            for e in events(log)
            if e["event"] == "start" and e["time"] > deleted_at and e["world_size"] == 2
        ],
        timeout=300,
        every=1,
    )
    assert rejoined[0]["resumed_step"] > restarted[0]["resumed_step"]
    new = c.get("pod", f"{JOB}-worker-1", ns)
    assert new["metadata"]["uid"] != old
    assert new["spec"]["nodeName"] == NODE
    both = wait_for("a 2-worker step", lambda: steps_after(log, rejoined[0]["time"]), 60, 0.5)
    figures["pod_delete_to_two_worker_step_seconds"] = round(both[0]["time"] - deleted_at, 1)

    # --- The job succeeds, every step done once in the end.
    done = wait_until(
        "Succeeded",
        lambda: c.get("trainingjob", JOB, ns),
        lambda j: j.get("status", {}).get("phase") in {"Succeeded", "Failed"},
        timeout=600,
    )
    assert done["status"]["phase"] == "Succeeded", done["status"]
    assert [e for e in events(log) if e["event"] == "done"][-1]["step"] == STEPS
    figures["at_success"] = {k: done["status"].get(k) for k in ("restarts", "inPlaceRestarts")}
    # The hand deletion was the last failure: seen for what it is (SIGTERM, exit 143, no
    # DisruptionTarget on a real kubelet) and replaced for free; only torchrun's in-place
    # restarts spent the budget.
    last = done["status"]["lastFailure"]
    assert (last["pod"], last["reason"], last["counted"]) == (f"{JOB}-worker-1", "Deleted", False)
    assert done["status"]["restarts"] == done["status"]["inPlaceRestarts"]

    # --- helm uninstall: the operator goes; the CRD and the TrainingJob stay.
    result = release.helm("uninstall", release.name, "--wait")
    assert result.returncode == 0, result.stderr
    operator_pods = f"app.kubernetes.io/instance={release.name}"
    wait_for("the operator pod gone", lambda: not c.list("pods", release.namespace, operator_pods))
    assert c.kubectl("get", "crd", "trainingjobs.trainop.dev", "-o", "name").strip()
    assert c.get("trainingjob", JOB, ns)["status"]["phase"] == "Succeeded"


def _queued(job: dict[str, Any], priority_class: str) -> dict[str, Any]:
    job["metadata"]["labels"] = {"kueue.x-k8s.io/queue-name": "research"}
    job["spec"]["scheduling"]["priorityClassName"] = priority_class
    return job


def test_kueue_preemption_checkpoints_on_the_real_node_and_the_job_resumes_from_it(  # noqa: PLR0915
    real: RealCluster, images: Images, tmp_path: Path
) -> None:
    """Issue 16's preemption on real containers: a higher-priority job takes the quota of
    a training one. Kueue evicts the low job, trainop stops it gracefully (SIGTERM), and
    tinylm saves a checkpoint at the step it stopped at. Once the high job is done, Kueue
    admits the low job again. It resumes from exactly that step, and nothing is counted
    against its budget. The operator runs from this tree, as in tests/cluster, next to
    real Kueue (tests/cluster/kueue.py)."""
    c = real
    ns = "e2e-kueue"
    # The first test's helm release is gone unless it failed midway; its operator
    # would hold the leader lease this test's operator waits for.
    c.kubectl("delete", "deployment", "-A", "-l", "app.kubernetes.io/name=trainop", check=False)
    c.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    wait_established(c, "trainingjobs.trainop.dev")
    c.kubectl("create", "namespace", ns)
    wait_for("default service account", lambda: c.get_or_none("sa", "default", ns))
    low_pc, high_pc = f"{ns}-low", f"{ns}-high"
    handle: kq.Kueue | None = None
    op = Operator(c, tmp_path / "operator.log")
    logs = {}
    for name in ("low", "high"):
        (tmp_path / name).mkdir()
        (tmp_path / name).chmod(0o777)  # the trainer runs as uid 1000
        logs[name] = tmp_path / name / "events.jsonl"

    def tails() -> str:
        texts = [op.log.read_text()[-3000:]]
        if handle is not None:
            texts.append(handle.log.read_text()[-2000:])
        return "\n---\n".join(texts)

    try:
        handle = kq.start(c, tmp_path / "kueue", localcluster.free_port, localcluster.cache_dir())
        op.start(
            TRAINOP_EXPORTER_IMAGE=images.operator,
            TRAINOP_POD_SECURITY_NAMESPACES=f"{ns}=privileged",  # the hostPath checkpoints
        )
        for pc, value in ((low_pc, 100), (high_pc, 1000)):
            c.apply(
                {
                    "apiVersion": "scheduling.k8s.io/v1",
                    "kind": "PriorityClass",
                    "metadata": {"name": pc},
                    "value": value,
                }
            )
        # One worker (500m + the sidecar's 10m) and a store (100m) per job: 610m each,
        # so two do not fit in 1 core and the second must preempt the first.
        # The flavor has no node labels: the jobs themselves ask for the real node.
        kq.apply_queue(c, ns, {"cpu": "1", "memory": "64Gi"}, {}, flavor="cpu")
        low = _job(images.trainer, tmp_path / "low", name="low", steps=5000, replicas=1)
        c.apply(_queued(low, low_pc), ns)
        wait_for("low's first steps", lambda: len(steps_after(logs["low"], 0)) >= 5, 300, 0.5)

        applied = time.time()
        c.apply(_queued(_job(images.trainer, tmp_path / "high", "high", 30, 1), high_pc), ns)
        (stop,) = wait_for(
            "low stopped by the preemption",
            lambda: [e for e in events(logs["low"]) if e["event"] == "stop"],
            timeout=180,
            every=0.5,
        )
        figures["preemption_to_checkpointed_stop_seconds"] = round(stop["time"] - applied, 1)
        last_step = max(e["step"] for e in events(logs["low"]) if e["event"] == "step")
        assert stop["step"] == last_step  # it stopped after a whole step, and saved it
        st = wait_until(
            "low suspended by Kueue",
            lambda: c.get("trainingjob", "low", ns).get("status", {}),
            lambda s: s.get("phase") == "Suspended",
            timeout=120,
        )
        assert st["reason"] == "EvictedByKueue", st
        assert "Preempted" in st["message"], st
        assert st.get("restarts", 0) == 0  # an eviction is not counted against the budget

        done = wait_until(
            "high Succeeded",
            lambda: c.get("trainingjob", "high", ns).get("status", {}),
            lambda s: s.get("phase") in {"Succeeded", "Failed"},
            timeout=300,
        )
        assert done["phase"] == "Succeeded", (done, tails())
        high_done = next(e for e in events(logs["high"]) if e["event"] == "done")
        assert high_done["step"] == 30

        # The quota is free again: Kueue admits low, which resumes at its stop's step.
        (resumed,) = wait_for(
            "low started again",
            lambda: [e for e in events(logs["low"]) if e["event"] == "start"][1:],
            timeout=300,
            every=0.5,
        )
        assert resumed["resumed_step"] == stop["step"], (resumed, stop)
        after = wait_for(
            "a step after the resume", lambda: steps_after(logs["low"], resumed["time"]), 120, 0.5
        )
        assert after[0]["step"] == stop["step"] + 1  # no step redone, none skipped
        figures["high_done_to_low_resumed_step_seconds"] = round(
            after[0]["time"] - high_done["time"], 1
        )
        st = c.get("trainingjob", "low", ns)["status"]
        assert st["phase"] == "Running", st
        assert st.get("restarts", 0) == 0, st
    except BaseException:
        print(tails())  # noqa: T201  (what the operator and Kueue said, on failure)
        raise
    finally:
        c.kubectl("delete", "trainingjobs", "--all", "-n", ns, "--timeout=120s", check=False)
        op.stop()
        kq.stop(c, handle)
        c.kubectl("delete", "priorityclass", low_pc, high_pc, "--ignore-not-found", check=False)

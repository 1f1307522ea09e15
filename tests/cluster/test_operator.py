"""The operator against the real control plane: what the API server holds is the truth."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest

from tests.cluster.conftest import Cluster, Operator, wait_for, wait_until
from tests.exporter.helpers import Exposition

pytestmark = pytest.mark.cluster
WORKERS = "trainop.dev/job-name={name},trainop.dev/role=worker"


def tj(name: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "image": "trainer:1",
        "entrypoint": {"module": "trainop_runtime.examples.tinylm", "args": ["--steps", "100"]},
        "resources": {"gpus": 1},
        "replicas": 2,
        "minReplicas": 1,
        "maxReplicas": 4,
        "failurePolicy": {"backoffSeconds": 0},
    }
    body.update(spec)
    return {
        "apiVersion": "trainop.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": body,
    }


def workers(c: Cluster, ns: str, name: str, live: bool = True) -> list[dict[str, Any]]:
    pods = c.list("pods", ns, WORKERS.format(name=name))
    if live:
        pods = [
            p
            for p in pods
            if not p["metadata"].get("deletionTimestamp")
            and p["status"].get("phase") not in ("Succeeded", "Failed")
        ]
    return sorted(pods, key=lambda p: p["metadata"]["name"])


def status(c: Cluster, ns: str, name: str) -> dict[str, Any]:
    return dict(c.get("trainingjob", name, ns).get("status") or {})


def until_phase(c: Cluster, ns: str, name: str, phase: str, timeout: float = 30) -> dict[str, Any]:
    return wait_until(
        f"{name} {phase}", lambda: status(c, ns, name), lambda s: s.get("phase") == phase, timeout
    )


def until_running(c: Cluster, ns: str, name: str, n: int, timeout: float = 30) -> list[Any]:
    def ready() -> list[Any] | None:
        pods = workers(c, ns, name)
        ok = len(pods) == n and all(p["status"].get("phase") == "Running" for p in pods)
        return pods if ok else None

    return wait_for(f"{n} running workers of {name}", ready, timeout)


def end_pod(c: Cluster, ns: str, pod: str, code: int, reason: str = "", message: str = "") -> None:
    notes = {"kwok.trainop.dev/exit-code": str(code)}
    if reason:
        notes["kwok.trainop.dev/reason"] = reason
    if message:
        notes["kwok.trainop.dev/message"] = message
    c.kubectl(
        "annotate", "pod", pod, "-n", ns, "--overwrite", *[f"{k}={v}" for k, v in notes.items()]
    )


def test_create_builds_pods_service_and_store_with_env_owners_and_labels(
    operator: Operator, ns: str
) -> None:
    c = operator.cluster
    c.apply(tj("create"), ns)
    pods = until_running(c, ns, "create", 2)
    job = c.get("trainingjob", "create", ns)
    uid = job["metadata"]["uid"]
    for i, pod in enumerate(pods):
        assert pod["metadata"]["name"] == f"create-worker-{i}"
        assert pod["metadata"]["ownerReferences"][0]["uid"] == uid
        assert pod["metadata"]["labels"]["trainop.dev/slot"] == str(i)
        trainer = next(x for x in pod["spec"]["containers"] if x["name"] == "trainer")
        env = {e["name"]: e.get("value") for e in trainer["env"]}
        assert env["PET_NNODES"] == "1:4"
        assert env["PET_RDZV_BACKEND"] == "c10d"
        assert env["PET_RDZV_ENDPOINT"] == f"create-rdzv.create.{ns}.svc:29400"
        assert "is_host=false" in env["PET_RDZV_CONF"]
        assert env["PET_RDZV_ID"] == f"{uid}-0"
        assert trainer["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert trainer["args"][-3:] == ["--", "--steps", "100"]
        sidecar = pod["spec"]["initContainers"][0]
        assert sidecar["restartPolicy"] == "Always"  # native sidecar
    svc = c.get("service", "create", ns)
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True
    store = c.get("pod", "create-rdzv", ns)
    assert store["metadata"]["ownerReferences"][0]["uid"] == uid
    st = until_phase(c, ns, "create", "Running")
    assert st["workers"] == "2/2"
    assert st["selector"] == WORKERS.format(name="create")
    assert st["observedGeneration"] == job["metadata"]["generation"]
    assert any(e["reason"] == "CreatedWorkers" for e in c.events(ns, "create"))


def test_worker_0_failure_is_replaced_and_the_job_continues(operator: Operator, ns: str) -> None:
    c = operator.cluster
    c.apply(tj("heal"), ns)
    before = until_running(c, ns, "heal", 2)
    until_phase(c, ns, "heal", "Running")
    end_pod(c, ns, "heal-worker-0", 1, message="RuntimeError: NCCL timeout")

    def replaced() -> list[Any] | None:
        pods = workers(c, ns, "heal")
        uids = {p["metadata"]["uid"] for p in pods}
        fresh = len(pods) == 2 and before[0]["metadata"]["uid"] not in uids
        return pods if fresh and all(p["status"].get("phase") == "Running" for p in pods) else None

    pods = wait_for("worker-0 replaced", replaced)
    assert pods[1]["metadata"]["uid"] == before[1]["metadata"]["uid"]  # the survivor stays
    st = until_phase(c, ns, "heal", "Running")
    assert st["restarts"] == 1
    assert st["lastFailure"]["pod"] == "heal-worker-0"
    assert st["lastFailure"]["exitCode"] == 1
    assert st["lastFailure"]["message"] == "RuntimeError: NCCL timeout"
    assert st["restartsSummary"] == "1/6"
    per_job = (
        f'trainop_operator_job_restarts{{trainingjob="heal",trainingjob_namespace="{ns}"}} 1.0'
    )
    wait_for("per-job restarts metric", lambda: per_job in operator.metrics())
    assert any(e["reason"] == "WorkerFailed" for e in c.events(ns, "heal"))


def test_permanent_exit_code_fails_the_job_with_reason_and_frees_gpus(
    operator: Operator, ns: str
) -> None:
    c = operator.cluster
    rules = [{"action": "FailJob", "exitCodes": [3]}]
    c.apply(tj("perm", failurePolicy={"rules": rules}), ns)
    until_running(c, ns, "perm", 2)
    end_pod(c, ns, "perm-worker-1", 3, message="bad config: vocab size mismatch")
    st = until_phase(c, ns, "perm", "Failed")
    assert st["reason"] == "FailedByRule"
    assert st["lastFailure"]["exitCode"] == 3
    assert "vocab size mismatch" in st["message"]
    assert st["completionTime"]
    wait_for(
        "no pod holds a GPU",
        lambda: not workers(c, ns, "perm") and c.get_or_none("pod", "perm-rdzv", ns) is None,
    )


def test_budget_runs_out_and_the_job_fails(operator: Operator, ns: str) -> None:
    c = operator.cluster
    c.apply(
        tj(
            "budget",
            replicas=1,
            minReplicas=1,
            failurePolicy={"backoffLimit": 2, "backoffSeconds": 0},
        ),
        ns,
    )
    for attempt in range(3):
        pod = until_running(c, ns, "budget", 1)[0]
        end_pod(c, ns, pod["metadata"]["name"], 137, reason="OOMKilled")
        if attempt < 2:
            wait_for(
                "replacement",
                lambda p=pod: (
                    (w := workers(c, ns, "budget"))
                    and w[0]["metadata"]["uid"] != p["metadata"]["uid"]
                ),
            )
    st = until_phase(c, ns, "budget", "Failed")
    assert st["reason"] == "BackoffLimitExceeded"
    assert st["restarts"] == 2
    assert st["restartsByReason"] == {"OOMKilled": 2}
    assert st["lastFailure"]["reason"] == "OOMKilled"


def test_kubectl_scale_adds_and_removes_workers(operator: Operator, ns: str) -> None:
    c = operator.cluster
    c.apply(tj("scale"), ns)
    until_running(c, ns, "scale", 2)
    c.kubectl("scale", "trainingjob/scale", "-n", ns, "--replicas=4")
    pods = until_running(c, ns, "scale", 4)
    assert [p["metadata"]["name"] for p in pods] == [f"scale-worker-{i}" for i in range(4)]
    wait_for("status.replicas 4", lambda: status(c, ns, "scale").get("replicas") == 4)
    c.kubectl("scale", "trainingjob/scale", "-n", ns, "--replicas=1")
    wait_for(
        "one worker left",
        lambda: [p["metadata"]["name"] for p in workers(c, ns, "scale")] == ["scale-worker-0"],
    )
    out = c.kubectl("scale", "trainingjob/scale", "-n", ns, "--replicas=9", check=False)
    assert "spec.replicas must be <= spec.maxReplicas" in out
    st = status(c, ns, "scale")
    assert st["restarts"] == 0


def set_suspend(c: Cluster, ns: str, name: str, suspend: bool) -> None:
    patch = json.dumps({"spec": {"suspend": suspend}})
    c.kubectl("patch", f"trainingjob/{name}", "-n", ns, "--type=merge", "-p", patch)


def test_suspend_and_resume(operator: Operator, ns: str) -> None:
    c = operator.cluster
    c.apply(tj("pause"), ns)
    until_running(c, ns, "pause", 2)
    set_suspend(c, ns, "pause", True)
    until_phase(c, ns, "pause", "Suspended")
    wait_for(
        "no pods while suspended", lambda: not c.list("pods", ns, "trainop.dev/job-name=pause")
    )
    set_suspend(c, ns, "pause", False)
    until_running(c, ns, "pause", 2)
    st = until_phase(c, ns, "pause", "Running")
    assert st["restarts"] == 0


def test_kueue_queue_label_without_kueue_says_so(operator: Operator, ns: str) -> None:
    """No Kueue CRDs here (tests/cluster/test_kueue.py removes its own): a labelled job
    waits with a condition that names what is missing, never silently."""
    c = operator.cluster
    body = tj("queued")
    body["metadata"]["labels"] = {"kueue.x-k8s.io/queue-name": "team-a"}
    c.apply(body, ns)
    st = wait_until(
        "queued waits for Kueue",
        lambda: status(c, ns, "queued"),
        lambda s: s.get("reason") == "KueueNotInstalled",
        timeout=60,
    )
    assert st["phase"] == "Suspended"
    cond = next(x for x in st["conditions"] if x["type"] == "QueueAdmitted")
    assert (cond["status"], cond["reason"]) == ("False", "KueueNotInstalled")
    assert "TrainingJob.v1alpha1.trainop.dev" in cond["message"]
    assert c.get("trainingjob", "queued", ns)["spec"]["suspend"] is False  # not written
    assert not workers(c, ns, "queued")
    assert any(e["reason"] == "KueueNotInstalled" for e in c.events(ns, "queued"))


def test_delete_cleans_up_every_child(operator: Operator, ns: str) -> None:
    c = operator.cluster
    c.apply(tj("gone"), ns)
    until_running(c, ns, "gone", 2)
    c.kubectl("delete", "trainingjob", "gone", "-n", ns, "--wait=true")
    wait_for(
        "children garbage-collected",
        lambda: (
            not c.list("pods", ns, "trainop.dev/job-name=gone")
            and c.get_or_none("service", "gone", ns) is None
        ),
        timeout=60,
    )


@pytest.mark.parametrize(
    ("spec", "reason", "fix"),
    [
        ({"resources": {"gpus": 16}}, "InsufficientGPUCapacity", None),
        (
            {"checkpoint": {"volume": {"persistentVolumeClaim": {"claimName": "ckpt"}}}},
            "CheckpointVolumeNotFound",
            "pvc",
        ),
    ],
)
def test_bad_input_gets_a_condition_and_event_and_nothing_is_created(
    operator: Operator, ns: str, spec: dict[str, Any], reason: str, fix: str | None
) -> None:
    c = operator.cluster
    c.apply(tj("bad", **spec), ns)
    st = wait_until(reason, lambda: status(c, ns, "bad"), lambda s: s.get("reason") == reason)
    cond = next(x for x in st["conditions"] if x["type"] == "SpecValid")
    assert cond["status"] == "False"
    assert cond["reason"] == reason
    wait_for("warning event", lambda: any(e["type"] == "Warning" for e in c.events(ns, "bad")))
    assert c.list("pods", ns, "trainop.dev/job-name=bad") == []
    assert c.get_or_none("service", "bad", ns) is None
    assert operator.alive()
    if fix == "pvc":
        c.apply(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": "ckpt"},
                "spec": {
                    "accessModes": ["ReadWriteMany"],
                    "resources": {"requests": {"storage": "1Gi"}},
                },
            },
            ns,
        )
        # The operator notices on its periodic look, or sooner on any event.
        c.kubectl("annotate", "trainingjob/bad", "-n", ns, "poke=1")
        # kwok has no volume provisioner, so the pods stay Pending on the unbound
        # claim; what matters is that the job is no longer held back.
        wait_for("workers created", lambda: len(workers(c, ns, "bad")) == 2)


def test_operator_killed_halfway_through_a_32_worker_job_converges_to_exactly_32(
    operator: Operator, ns: str
) -> None:
    c = operator.cluster
    operator.start(TRAINOP_WRITE_CONCURRENCY="1")
    try:
        c.apply(tj("big", replicas=32, minReplicas=1, maxReplicas=32, resources={"gpus": 0}), ns)
        seen = wait_for(
            "first pods",
            lambda: len(c.list("pods", ns, WORKERS.format(name="big"))) or None,
            every=0.05,
        )
        operator.kill()
        at_kill = len(c.list("pods", ns, WORKERS.format(name="big")))
        assert at_kill < 32, f"operator finished before it could be killed ({seen}, {at_kill})"
    finally:
        operator.start()
    pods = until_running(c, ns, "big", 32, timeout=60)
    names = sorted(p["metadata"]["name"] for p in pods)
    assert names == sorted(f"big-worker-{i}" for i in range(32))
    assert len(c.list("pods", ns, WORKERS.format(name="big"))) == 32


def test_workers_on_a_lost_node_are_replaced_without_spending_the_budget(
    operator: Operator, ns: str
) -> None:
    c = operator.cluster
    # gpu-node-2 is the only node with the label value below, so the job lands there.
    c.kubectl("label", "node", "gpu-node-2", "trainop.dev/test-pool=lost", "--overwrite")
    c.apply(
        tj("lost", replicas=1, scheduling={"nodeSelector": {"trainop.dev/test-pool": "lost"}}), ns
    )
    first = until_running(c, ns, "lost", 1)[0]
    c.kubectl("label", "node", "gpu-node-2", "trainop.dev/test-pool-")
    try:
        # Stop kwok's heartbeat: the node lifecycle controller marks it NotReady after
        # its grace period, then the operator declares the node lost.
        c.kubectl("annotate", "node", "gpu-node-2", "kwok.trainop.dev/not-ready=true")

        def replaced() -> bool:
            pods = c.list("pods", ns, WORKERS.format(name="lost"))
            return bool(pods) and all(
                p["metadata"]["uid"] != first["metadata"]["uid"] for p in pods
            )

        wait_for("worker on the lost node replaced", replaced, timeout=90)
        st = status(c, ns, "lost")
        assert st["lastFailure"]["reason"] == "NodeLost"
        assert st["lastFailure"]["counted"] is False
        assert st["restarts"] == 0
    finally:
        c.kubectl("annotate", "node", "gpu-node-2", "kwok.trainop.dev/not-ready-")
        wait_for(
            "gpu-node-2 Ready again",
            lambda: any(
                x["type"] == "Ready" and x["status"] == "True"
                for x in c.get("node", "gpu-node-2", "")["status"]["conditions"]
            ),
            timeout=60,
        )
    # The sample itself: HELP and TYPE lines are served even when nothing was counted.
    lost = Exposition(operator.metrics()).value(
        "trainop_operator_restarts_total", reason="NodeLost", counted="false"
    )
    assert lost is not None
    assert lost >= 1


def test_two_replicas_with_leader_election_one_acts_and_the_standby_takes_over(
    operator: Operator, ns: str, tmp_path: Any
) -> None:
    c = operator.cluster
    operator.stop()  # the session operator runs without election; keep it out of the way
    a, b = Operator(c, tmp_path / "a.log"), Operator(c, tmp_path / "b.log")
    flags = ["--leader-elect", "--lease-namespace", ns]
    try:
        a.start(args=flags)
        b.start(args=flags)
        lease = wait_for("lease held", lambda: c.get_or_none("lease", "trainop-operator", ns))
        c.apply(tj("ha", replicas=1), ns)
        until_running(c, ns, "ha", 1)
        leader, standby = (
            (a, b)
            if lease["spec"]["holderIdentity"].endswith(str(a.proc.pid if a.proc else ""))
            else (b, a)
        )
        leader.kill()
        # The standby takes over once the lease expires (15 s) and converges the job.
        c.kubectl("scale", "trainingjob/ha", "-n", ns, "--replicas=2")
        until_running(c, ns, "ha", 2, timeout=60)
        holder = c.get("lease", "trainop-operator", ns)["spec"]["holderIdentity"]
        assert standby.proc is not None
        assert holder.endswith(str(standby.proc.pid))
        # A clean stop (rolling upgrade) hands the lease over at once.
        standby.stop()
        assert c.get("lease", "trainop-operator", ns)["spec"]["holderIdentity"] == ""
    finally:
        a.stop()
        b.stop()
        operator.start()


def test_progress_reported_by_the_pods_shows_in_status_and_kubectl_get(
    operator: Operator, ns: str
) -> None:
    c = operator.cluster
    c.apply(tj("prog"), ns)
    until_running(c, ns, "prog", 2)
    report = {
        "step": 120,
        "totalSteps": 200,
        "loss": 2.31,
        "samplesPerSecond": 512.0,
        "checkpointStep": 100,
        "checkpointTime": 1_795_000_000,
        "time": 1_795_000_030,
    }
    # What the metrics sidecar does every few seconds from the trainer's progress.json.
    c.kubectl(
        "annotate",
        "pod",
        "prog-worker-1",
        "-n",
        ns,
        "--overwrite",
        f"trainop.dev/progress={json.dumps(report)}",
    )
    st = wait_until(
        "progress in status",
        lambda: status(c, ns, "prog"),
        lambda s: (s.get("progress") or {}).get("step") == 120,
    )
    assert st["progress"]["summary"] == "120/200 (60%)"
    assert st["progress"]["checkpointStep"] == 100
    row = c.kubectl("get", "tj", "prog", "-n", ns, "--no-headers")
    assert "120/200 (60%)" in row
    assert "2/2" in row


def test_a_worker_that_stops_stepping_is_stalled_then_restarted_as_a_counted_hang(
    operator: Operator, ns: str
) -> None:
    c = operator.cluster
    policy = {"backoffLimit": 5, "backoffSeconds": 0, "hangSeconds": 10}
    c.apply(tj("hang", failurePolicy=policy), ns)
    until_running(c, ns, "hang", 2)
    # A fresh report, then nothing: no event comes, so only the operator's own wake-up
    # can notice the silence.
    for pod in ("hang-worker-0", "hang-worker-1"):
        report = {"step": 40, "time": time.time(), "stepSeconds": 0.5}
        c.kubectl(
            "annotate", "pod", pod, "-n", ns, "--overwrite",
            f"trainop.dev/progress={json.dumps(report)}",
        )  # fmt: skip
    reported = time.monotonic()
    st = wait_until(
        "Stalled",
        lambda: status(c, ns, "hang"),
        lambda s: any(x["type"] == "Stalled" and x["status"] == "True" for x in s["conditions"]),
        timeout=40,
    )
    assert time.monotonic() - reported >= 10  # not before its bound
    (cond,) = [x for x in st["conditions"] if x["type"] == "Stalled"]
    assert "made no training step" in cond["message"]
    assert "failurePolicy.restartOnHang" in cond["message"]
    assert st["restarts"] == 0  # reporting alone restarts nothing
    warned = c.kubectl(
        "get", "events", "-n", ns, "--field-selector", "reason=Stalled,type=Warning", "-o", "name"
    )
    assert len(warned.split()) == 1
    old = {p["metadata"]["uid"] for p in workers(c, ns, "hang")}
    c.kubectl(
        "patch", "trainingjob", "hang", "-n", ns, "--type=merge",
        "-p", '{"spec":{"failurePolicy":{"restartOnHang":true}}}',
    )  # fmt: skip
    st = wait_until(
        "both hung workers restarted",
        lambda: status(c, ns, "hang"),
        lambda s: s.get("restarts") == 2,
    )
    assert st["restartsByReason"] == {"Hang": 2}
    assert st["lastFailure"]["reason"] == "Hang"
    wait_for(
        "two new workers",
        lambda: (
            len(workers(c, ns, "hang")) == 2
            and not ({p["metadata"]["uid"] for p in workers(c, ns, "hang")} & old)
        ),
    )
    time.sleep(3)  # the old pods' ends are the same failures, not new ones
    assert status(c, ns, "hang")["restarts"] == 2


def test_usage_survives_a_replaced_pod_and_shows_in_kubectl_get_wide(
    operator: Operator, ns: str
) -> None:
    c = operator.cluster
    c.apply(tj("use", resources={"gpus": 1}), ns)
    until_running(c, ns, "use", 2)

    def report(pod: str, gpu: float, idle: float, joules: float) -> None:
        # What each worker's metrics sidecar pushes: its totals since it started.
        usage = {"gpuSeconds": gpu, "idleGpuSeconds": idle, "energyJoules": joules}
        c.kubectl(
            "annotate", "pod", pod, "-n", ns, "--overwrite",
            f"trainop.dev/progress={json.dumps({'step': 5, **usage})}",
        )  # fmt: skip

    def usage_is(gpu: float, joules: float) -> dict[str, Any]:
        return wait_until(
            f"status.usage at {gpu} GPU-s and {joules} J",
            lambda: status(c, ns, "use").get("usage") or {},
            lambda u: (u.get("gpuSeconds"), u.get("energyJoules")) == (gpu, joules),
        )

    report("use-worker-0", 3600, 600, 1.8e6)
    report("use-worker-1", 1800, 0, 0.9e6)
    usage_is(5400, 2.7e6)
    old = c.get("pod", "use-worker-0", ns)["metadata"]["uid"]
    c.kubectl("delete", "pod", "use-worker-0", "-n", ns, "--wait=false")
    wait_for(
        "use-worker-0 replaced",
        lambda: any(p["metadata"]["uid"] != old for p in workers(c, ns, "use")[:1]),
    )
    until_running(c, ns, "use", 2)
    # The replacement's sidecar counts from 0; the old pod's share stays.
    report("use-worker-0", 360, 0, 0.18e6)
    report("use-worker-1", 1900, 0, 0.95e6)
    u = usage_is(3600 + 360 + 1900, 1.8e6 + 0.18e6 + 0.95e6)
    assert u["idleGpuSeconds"] == 600
    assert u["gpuHours"] == round(5860 / 3600, 3)
    assert u["energyKWh"] == round(2.93e6 / 3.6e6, 4)
    header, row = c.kubectl("get", "tj", "use", "-n", ns, "-o", "wide").splitlines()[:2]
    # Cut at the header's column starts: the Message column holds spaces.
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    cells = {
        header[a:b].strip(): row[a:b].strip()
        for a, b in zip(starts, [*starts[1:], None], strict=True)
    }
    assert cells["GPU-HOURS"] == str(u["gpuHours"]), (header, row)
    assert cells["ENERGY-KWH"] == str(u["energyKWh"]), (header, row)

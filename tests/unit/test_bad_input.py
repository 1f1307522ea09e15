"""Bad input the schema lets through: a clear message, a condition and an Event, nothing
half-created, and no retry loop (the model, the pure plan, and the reconciler on a fake API)."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest
from prometheus_client import REGISTRY

from tests.factories import NOW, failed, observed, spec, worker
from trainop.api import constants as c
from trainop.api.parse import parse_spec
from trainop.api.status import Phase
from trainop.core.config import OperatorConfig
from trainop.core.plan import compute_plan
from trainop.kube.client import KubeError
from trainop.reconcile import Reconciler

CFG = OperatorConfig()
BASE: dict[str, Any] = {"image": "trainer:1", "entrypoint": {"module": "m"}}


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        pytest.param(
            {"resources": {"cpu": "4 cores"}},
            "spec.resources.cpu: '4 cores' is not a CPU quantity; write it as cores (4, 0.5) "
            "or millicores (500m)",
            id="cpu-words",
        ),
        pytest.param(
            {"resources": {"cpu": -2}},
            "spec.resources.cpu: -2 is negative; write a CPU request as cores",
            id="cpu-negative-int",
        ),
        pytest.param(
            {"resources": {"memory": "16GB"}},
            "spec.resources.memory: '16GB' is not a memory quantity; write it as bytes with a "
            "binary suffix (16Gi, 512Mi)",
            id="memory-decimal-unit-typo",
        ),
        pytest.param(
            {"resources": {"memory": "16Gi; rm -rf /"}},
            "spec.resources.memory: '16Gi; rm -rf /' is not a memory quantity",
            id="memory-hostile",
        ),
        pytest.param(
            {"resources": {"gpuResourceName": "nvidia gpu"}},
            "spec.resources.gpuResourceName: 'nvidia gpu' is not an extended resource name; "
            "use the domain/name your device plugin registers",
            id="gpu-name-space",
        ),
        pytest.param(
            {"resources": {"gpuResourceName": "gpu"}},
            "spec.resources.gpuResourceName: 'gpu' is not an extended resource name",
            id="gpu-name-no-domain",
        ),
        pytest.param(
            {"scheduling": {"priorityClassName": "High"}},
            "spec.scheduling.priorityClassName: 'High' is not a Kubernetes object name; "
            "use lowercase letters",
            id="priority-class-uppercase",
        ),
        pytest.param(
            {"scheduling": {"schedulerName": "volcano --v=9"}},
            "spec.scheduling.schedulerName: 'volcano --v=9' is not a Kubernetes object name",
            id="scheduler-hostile",
        ),
        pytest.param(
            {"checkpoint": {"volume": {"persistentVolumeClaim": {"claimName": "../secrets/x"}}}},
            "spec.checkpoint.volume: persistentVolumeClaim.claimName: '../secrets/x' is not a "
            "Kubernetes object name",
            id="claim-path-traversal",
        ),
        pytest.param(
            {"image": "trainer:1 --privileged"},
            "spec.image: 'trainer:1 --privileged' is not an image reference",
            id="image-space",
        ),
        pytest.param(
            {"imagePullPolicy": "Sometimes"},
            "spec.imagePullPolicy: Input should be 'Always', 'IfNotPresent' or 'Never'",
            id="pull-policy",
        ),
    ],
)
def test_bad_quantities_and_names_say_what_is_wrong_and_how_to_fix_it(
    patch: dict[str, Any], message: str
) -> None:
    parsed, error = parse_spec({**BASE, **patch})
    assert parsed is None
    assert error is not None
    assert error.startswith(message)


@pytest.mark.parametrize(
    "patch",
    [
        pytest.param({"resources": {"cpu": "500m", "memory": "16Gi"}}, id="milli-and-binary"),
        pytest.param({"resources": {"cpu": 4, "memory": 17179869184}}, id="plain-integers"),
        pytest.param({"resources": {"cpu": "0.5", "memory": "1e9"}}, id="decimal-exponent"),
        pytest.param({"resources": {"gpuResourceName": "amd.com/gpu"}}, id="amd"),
        pytest.param({"scheduling": {"priorityClassName": "team-a.high"}}, id="dotted-name"),
    ],
)
def test_good_quantities_and_names_pass(patch: dict[str, Any]) -> None:
    assert parse_spec({**BASE, **patch})[1] is None


REFUSAL = 'Pod "llm-worker-0": pods "llm-worker-0" is forbidden: no PriorityClass with name x'


def test_a_refused_dry_run_creates_nothing_and_says_why() -> None:
    plan = compute_plan(observed(service=False, admission_error=REFUSAL), NOW, CFG)
    assert plan.creates == ()
    assert plan.status.phase is Phase.PENDING
    assert plan.status.reason == "AdmissionRejected"
    assert REFUSAL in (plan.status.message or "")
    cond = next(cd for cd in plan.status.conditions if cd.type == "SpecValid")
    assert (cond.status, cond.reason) == ("False", "AdmissionRejected")
    assert [e.type for e in plan.events if REFUSAL in e.message] == ["Warning"]
    assert plan.requeue_after is None


def test_a_running_job_refused_more_pods_keeps_what_runs_and_creates_nothing() -> None:
    obs = observed([worker(0)], admission_error=REFUSAL, the_spec=spec(replicas=3))
    plan = compute_plan(obs, NOW, CFG)
    assert plan.creates == ()
    assert plan.deletes == ()
    assert plan.status.phase is Phase.RUNNING


def test_every_failure_of_one_pass_is_in_the_plan() -> None:
    plan = compute_plan(observed([failed(0, 1), failed(1, 137, "OOMKilled")]), NOW, CFG)
    assert [(f.pod, f.reason, f.counted) for f in plan.failures] == [
        ("llm-worker-0", "Error", True),
        ("llm-worker-1", "OOMKilled", True),
    ]


# --- the reconciler against a fake API server -------------------------------------------
class FakeKube:
    """Holds one TrainingJob; answers creates with `refuse` (by kind) or stores them."""

    def __init__(self, job: dict[str, Any], refuse: dict[str, KubeError] | None = None) -> None:
        self.job = job
        self.refuse = refuse or {}
        self.objects: list[dict[str, Any]] = []
        self.dry_runs: list[str] = []
        self.refused: list[str] = []
        self.delete_error: KubeError | None = None
        self.events: list[dict[str, Any]] = []

    async def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.job)

    async def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == "Pod"]

    async def get_service(self, namespace: str, name: str) -> dict[str, Any] | None:
        return next((o for o in self.objects if o["kind"] == "Service"), None)

    async def get_pvc(self, namespace: str, name: str) -> dict[str, Any] | None:
        return None

    async def replace_job_status(self, job: dict[str, Any], status: dict[str, Any]) -> None:
        self.job["status"] = status

    async def create(self, obj: dict[str, Any], *, dry_run: bool = False) -> None:
        if dry_run:
            self.dry_runs.append(obj["metadata"]["name"])
        error = self.refuse.get(obj["kind"])
        if error is not None:
            if not dry_run:
                self.refused.append(obj["metadata"]["name"])
            raise error
        if not dry_run:
            uid = f"uid-{obj['metadata']['name']}"
            self.objects.append({**obj, "metadata": {**obj["metadata"], "uid": uid}})

    async def create_event(self, body: dict[str, Any]) -> None:
        self.events.append(body)

    async def delete_pod(self, namespace: str, name: str, *args: Any) -> None:
        if self.delete_error is not None:
            raise self.delete_error
        self.objects = [o for o in self.objects if o["metadata"]["name"] != name]


def job(generation: int = 1, **overrides: Any) -> dict[str, Any]:
    raw = {
        **BASE,
        "replicas": 2,
        "failurePolicy": {"backoffSeconds": 0},
        **overrides,
    }
    return {
        "metadata": {
            "name": "llm",
            "namespace": "team-a",
            "uid": "uid-1",
            "generation": generation,
        },
        "spec": raw,
    }


FORBIDDEN = KubeError(403, "Forbidden", 'pods "llm-worker-0" is forbidden: no PriorityClass x')


async def settled(rec: Reconciler, key: tuple[str, str]) -> float | None:
    """One reconcile, and the Events it posts in the background posted."""
    again = await rec.reconcile(key)
    await rec.drain_events()
    return again


def reconcile(kube: FakeKube) -> float | None:
    rec = Reconciler(kube, CFG, clock=lambda: NOW)  # type: ignore[arg-type]
    return asyncio.run(settled(rec, ("team-a", "llm")))


def test_reconciler_refused_at_dry_run_creates_nothing_writes_the_condition_and_warns() -> None:
    kube = FakeKube(job(), refuse={"Pod": FORBIDDEN})
    assert reconcile(kube) is None  # no retry loop: only a spec change or a resync asks again
    assert kube.objects == []  # not even the Service
    # One of each: the Service, the NetworkPolicy, the store and one worker for all workers.
    assert sorted(kube.dry_runs) == ["llm", "llm", "llm-rdzv", "llm-worker-0"]  # + NetworkPolicy
    st = kube.job["status"]
    assert st["reason"] == "AdmissionRejected"
    assert "no PriorityClass x" in st["message"]
    warnings = [e for e in kube.events if e["type"] == "Warning"]
    assert warnings
    assert "no PriorityClass x" in warnings[0]["message"]


def test_reconciler_does_not_ask_again_until_the_spec_changes_or_its_pause_ends() -> None:
    kube = FakeKube(job(), refuse={"Pod": FORBIDDEN})
    rec = Reconciler(kube, CFG, clock=lambda: NOW)  # type: ignore[arg-type]

    async def three_passes() -> None:
        await settled(rec, ("team-a", "llm"))
        await settled(rec, ("team-a", "llm"))  # e.g. woken by its own status write
        asked = len(kube.dry_runs)
        kube.job["metadata"]["generation"] = 2
        kube.job["spec"]["scheduling"] = {"priorityClassName": "exists"}
        kube.refuse = {}
        await settled(rec, ("team-a", "llm"))
        assert asked == 4  # the Service, the NetworkPolicy, the store, one worker

    asyncio.run(three_passes())
    assert {o["metadata"]["name"] for o in kube.objects} == {
        "llm",
        "llm-rdzv",
        "llm-worker-0",
        "llm-worker-1",
    }
    assert kube.job["status"]["reason"] != "AdmissionRejected"


def test_reconciler_turns_a_refused_real_create_into_an_event_and_a_paused_retry() -> None:
    quota = KubeError(403, "Forbidden", "exceeded quota: gpus, requested: 1, limited: 1")
    kube = FakeKube(job(), refuse={})
    rec = Reconciler(kube, CFG, clock=lambda: NOW)  # type: ignore[arg-type]

    async def run() -> float | None:
        await settled(rec, ("team-a", "llm"))
        # worker-1 went away and the namespace's quota has been used up meanwhile.
        kube.objects = [o for o in kube.objects if o["metadata"]["name"] != "llm-worker-1"]
        kube.refuse = {"Pod": quota}
        retry = await settled(rec, ("team-a", "llm"))
        await settled(rec, ("team-a", "llm"))  # woken again before the pause is over
        return retry

    retry = asyncio.run(run())
    assert retry is not None
    assert retry >= 5
    assert kube.refused == ["llm-worker-1"]  # asked once, not again within the pause
    rejected = [e for e in kube.events if e["reason"] == "CreateRejected"]
    assert len(rejected) == 1
    assert "exceeded quota" in rejected[0]["message"]


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(KubeError(500, "InternalError", "etcd timeout"), id="5xx"),
        pytest.param(KubeError(429, "TooManyRequests", "slow down"), id="throttled"),
    ],
)
def test_reconciler_leaves_transient_errors_to_the_queues_backoff(error: KubeError) -> None:
    kube = FakeKube(job(), refuse={"Pod": error})
    with pytest.raises(KubeError):
        reconcile(kube)


@pytest.mark.parametrize(
    ("status", "refused"),
    [
        pytest.param(400, True, id="bad-request"),
        pytest.param(403, True, id="admission-or-quota"),
        pytest.param(422, True, id="invalid"),
        pytest.param(401, False, id="expired-token"),
        pytest.param(409, False, id="conflict"),
        pytest.param(429, False, id="throttled"),
        pytest.param(500, False, id="server-error"),
        pytest.param(503, False, id="unavailable"),
    ],
)
def test_only_answers_that_would_repeat_count_as_refusals(status: int, refused: bool) -> None:
    assert KubeError(status, "", "").refused is refused


def _fail(pod: dict[str, Any], exit_code: int) -> None:
    pod["status"] = {
        "phase": "Failed",
        "containerStatuses": [
            {
                "name": c.TRAINER_CONTAINER,
                "state": {"terminated": {"exitCode": exit_code, "reason": "Error"}},
            }
        ],
    }


def test_events_and_restart_counts_survive_a_delete_that_fails_after_the_status_write() -> None:
    kube = FakeKube(job())
    rec = Reconciler(kube, CFG, clock=lambda: NOW)  # type: ignore[arg-type]
    asyncio.run(settled(rec, ("team-a", "llm")))
    for pod in kube.objects:
        if pod["metadata"]["name"].startswith("llm-worker-"):
            _fail(pod, 1)
    kube.delete_error = KubeError(500, "InternalError", "etcd leader changed")
    labels = {"reason": "Error", "counted": "true"}
    before = REGISTRY.get_sample_value("trainop_operator_restarts_total", labels) or 0.0
    with pytest.raises(KubeError):
        asyncio.run(settled(rec, ("team-a", "llm")))
    assert kube.job["status"]["restarts"] == 2
    failed_events = [e["message"] for e in kube.events if e["reason"] == "WorkerFailed"]
    assert len(failed_events) == 2
    # Both failures of the pass are counted, not only the last one.
    after = REGISTRY.get_sample_value("trainop_operator_restarts_total", labels) or 0.0
    assert after - before == 2

"""kube/addons.py against a fake API server: what it asks, what it remembers, and what a
failed Workload write turns into."""

from __future__ import annotations

from typing import Any

import pytest

from tests.factories import JOB, workload_obj
from trainop.api import constants as c
from trainop.core import kueue
from trainop.core.plan import WorkloadWrite
from trainop.kube.addons import SERVED_MEMORY_SECONDS, AddOns
from trainop.kube.client import KubeError

ADMITTED = {"QuotaReserved": (True, "QuotaReserved", ""), "Admitted": (True, "Admitted", "")}


class FakeKube:
    def __init__(self, served: set[str], objects: dict[str, dict[str, Any]]) -> None:
        self.served = served
        self.objects = objects  # "resource/name" -> object
        self.asked: list[str] = []
        self.error: KubeError | None = None
        self.writes: list[tuple[str, str]] = []

    async def serves(self, api_version: str) -> bool:
        self.asked.append(f"serves {api_version}")
        return api_version in self.served

    async def get_namespaced(
        self, api_version: str, resource: str, namespace: str, name: str
    ) -> dict[str, Any] | None:
        self.asked.append(f"get {resource}/{name}")
        return self.objects.get(f"{resource}/{name}")

    async def get_cluster_scoped(
        self, api_version: str, resource: str, name: str
    ) -> dict[str, Any] | None:
        self.asked.append(f"get {resource}/{name}")
        return self.objects.get(f"{resource}/{name}")

    async def _write(self, verb: str, name: str) -> None:
        self.writes.append((verb, name))
        if self.error is not None:
            raise self.error

    async def create(self, obj: dict[str, Any]) -> None:
        await self._write("create", obj["metadata"]["name"])

    async def delete_workload(self, namespace: str, name: str, uid: str) -> None:
        await self._write("delete", name)

    async def patch_workload(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        await self._write("patch", name)

    async def patch_workload_status(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        await self._write("status", name)


WL_NAME = kueue.workload_name(JOB)


def addons(kube: FakeKube, now: list[float]) -> AddOns:
    return AddOns(kube, clock=lambda: now[0])  # type: ignore[arg-type]


async def test_without_kueue_nothing_else_is_asked_and_the_answer_is_remembered() -> None:
    kube, now = FakeKube(set(), {}), [0.0]
    a = addons(kube, now)
    assert (await a.observe_queue(JOB, "high")).served is False
    assert (await a.observe_queue(JOB, "high")).served is False
    assert kube.asked == [f"serves {c.KUEUE_API_VERSION}"]
    now[0] += SERVED_MEMORY_SECONDS
    await a.observe_queue(JOB, None)  # Kueue may have been installed meanwhile
    assert kube.asked.count(f"serves {c.KUEUE_API_VERSION}") == 2


async def test_an_admitted_workload_comes_with_its_flavors() -> None:
    wl = workload_obj(conditions=ADMITTED, admitted={"workers": 2, "store": 1})
    flavor = {"metadata": {"name": "gpu-a"}, "spec": {"nodeLabels": {"pool": "h100"}}}
    kube = FakeKube(
        {c.KUEUE_API_VERSION},
        {f"workloads/{WL_NAME}": wl, "resourceflavors/gpu-a": flavor},
    )
    view = await addons(kube, [0.0]).observe_queue(JOB, "high")
    assert view.workload is not None
    assert view.workload.admitted
    assert view.flavors["gpu-a"].node_labels == {"pool": "h100"}
    assert kube.asked.count("get resourceflavors/gpu-a") == 1  # once, for both podSets
    assert "get priorityclasses/high" not in kube.asked  # only to create a Workload


@pytest.mark.parametrize(
    ("objects", "priority", "missing"),
    [
        pytest.param({"priorityclasses/high": {"value": 1000}}, 1000, False, id="found"),
        pytest.param({}, None, True, id="missing"),
    ],
)
async def test_a_new_workload_needs_the_priority_value(
    objects: dict[str, Any], priority: int | None, missing: bool
) -> None:
    view = await addons(FakeKube({c.KUEUE_API_VERSION}, objects), [0.0]).observe_queue(JOB, "high")
    assert (view.workload, view.priority, view.priority_class_missing) == (None, priority, missing)


async def test_a_previous_jobs_workload_of_the_same_name_is_not_ours() -> None:
    wl = workload_obj(owner="another-uid")
    kube = FakeKube({c.KUEUE_API_VERSION}, {f"workloads/{WL_NAME}": wl})
    assert (await addons(kube, [0.0]).observe_queue(JOB, None)).workload is None


async def test_gang_asks_only_the_served_pod_group_api() -> None:
    group = {"status": {"phase": "Running"}}
    kube = FakeKube({c.COSCHEDULING_API_VERSION}, {"podgroups/llm": group})
    view = await addons(kube, [0.0]).observe_gang(JOB)
    assert view.served == {c.VOLCANO_API_VERSION: False, c.COSCHEDULING_API_VERSION: True}
    assert view.pod_groups == {c.COSCHEDULING_API_VERSION: group}
    assert kube.asked.count("get podgroups/llm") == 1


@pytest.mark.parametrize(
    ("error", "retry", "refused"),
    [
        pytest.param(None, None, None, id="written"),
        pytest.param(KubeError(409, "Conflict", "changed"), 0.0, None, id="conflict"),
        pytest.param(KubeError(404, "NotFound", "gone"), 0.0, None, id="gone"),
        pytest.param(
            KubeError(422, "Invalid", "spec.podSets: too many"),
            30.0,
            f"Workload {WL_NAME}: spec.podSets: too many",
            id="refused",
        ),
    ],
)
@pytest.mark.parametrize("verb", ["create", "delete", "patch", "status"])
async def test_workload_writes(
    verb: str, error: KubeError | None, retry: float | None, refused: str | None
) -> None:
    kube = FakeKube({c.KUEUE_API_VERSION}, {})
    kube.error = error
    a = addons(kube, [0.0])
    await a.serves(c.KUEUE_API_VERSION)
    body = {"metadata": {"name": WL_NAME}}
    out = await a.write_workload(JOB.namespace, WorkloadWrite(verb, WL_NAME, "wl-1", body))  # type: ignore[arg-type]
    assert kube.writes == [(verb, WL_NAME)]
    assert (out.retry_after, out.refused) == (retry, refused)
    # Gone or changed: whether Kueue is still there is asked again.
    assert (c.KUEUE_API_VERSION in a.served) == (retry != 0.0)


async def test_a_server_error_is_raised() -> None:
    kube = FakeKube({c.KUEUE_API_VERSION}, {})
    kube.error = KubeError(500, "InternalError", "etcd")
    with pytest.raises(KubeError):
        await addons(kube, [0.0]).write_workload(
            JOB.namespace, WorkloadWrite("create", WL_NAME, "", {"metadata": {"name": WL_NAME}})
        )

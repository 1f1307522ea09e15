"""Admission dry runs (reconcile._dry_run): a burst of identical jobs pays one dry run
per object shape and namespace, never a stale yes after a refusal, and a shape that
differs in anything but its job's name and uid is always asked about."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.factories import spec
from tests.unit.test_bad_input import CFG, FORBIDDEN, FakeKube, job
from trainop.core.build import JobRef, build_service, build_store_pod, build_worker_pod
from trainop.reconcile import Reconciler


def children(name: str, namespace: str = "team-a", image: str = "trainer:1") -> list[Any]:
    ref = JobRef(name=name, namespace=namespace, uid=f"uid-{name}-{namespace}", labels={})
    s = spec(image=image)
    return [
        build_service(ref, s),
        build_store_pod(ref, s),
        *(build_worker_pod(ref, s, slot, 0, CFG) for slot in range(2)),
    ]


FIRST = children("llm-a")


@pytest.mark.parametrize(
    ("second", "asked"),
    [
        pytest.param(children("llm-b"), 0, id="same-shape-same-namespace-not-asked"),
        pytest.param(children("llm-b", namespace="team-b"), 3, id="other-namespace"),
        pytest.param(children("llm-b", image="trainer:2"), 2, id="other-image-asks-for-pods"),
        pytest.param(children("llm-long"), 3, id="longer-name-asks"),
    ],
)
def test_a_shape_admitted_moments_ago_is_not_asked_about_again(
    second: list[Any], asked: int
) -> None:
    kube = FakeKube(job())
    rec = Reconciler(kube, CFG)  # type: ignore[arg-type]

    async def both() -> None:
        assert await rec._dry_run(FIRST) is None
        before = len(kube.dry_runs)
        assert before == 3  # Service, store pod, one worker for both workers
        assert await rec._dry_run(second) is None
        assert len(kube.dry_runs) - before == asked

    asyncio.run(both())


def test_a_refusal_forgets_what_was_admitted_in_its_namespace() -> None:
    kube = FakeKube(job())
    rec = Reconciler(kube, CFG)  # type: ignore[arg-type]

    async def scenario() -> None:
        assert await rec._dry_run(FIRST) is None
        kube.refuse = {"Pod": FORBIDDEN}  # e.g. a new policy or quota
        assert await rec._dry_run(children("llm-b", image="trainer:2")) is not None
        # The first job's pod shape was admitted, but is asked about again: refused now.
        assert await rec._dry_run(children("llm-c")) is not None

    asyncio.run(scenario())

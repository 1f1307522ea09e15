"""Write lanes (reconcile.Reconciler, OperatorConfig.write_lanes): new jobs create their
objects one job per lane, so a burst finishes job after job instead of every job at the
end, while a single replacement (a repair) never waits behind them."""

from __future__ import annotations

import asyncio
import copy
from dataclasses import replace
from typing import Any

from tests.unit.test_bad_input import CFG, job, settled
from trainop.reconcile import Reconciler


class TwoJobApi:
    """A fake API server holding several jobs; creates take a moment and are logged."""

    def __init__(self, names: list[str]) -> None:
        self.jobs = {}
        for name in names:
            body = job()
            body["metadata"].update(name=name, uid=f"uid-{name}")
            self.jobs[name] = body
        self.log: list[tuple[str, str]] = []

    async def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.jobs[name])

    async def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        return []

    async def get_service(self, namespace: str, name: str) -> dict[str, Any] | None:
        return None

    async def get_pvc(self, namespace: str, name: str) -> dict[str, Any] | None:
        return None

    async def replace_job_status(self, body: dict[str, Any], status: dict[str, Any]) -> None:
        self.jobs[body["metadata"]["name"]]["status"] = status

    async def create(self, obj: dict[str, Any], *, dry_run: bool = False) -> None:
        if dry_run:
            return
        owner = obj["metadata"]["ownerReferences"][0]["name"]
        self.log.append((owner, "start"))
        await asyncio.sleep(0.01)
        self.log.append((owner, "end"))

    async def create_event(self, body: dict[str, Any]) -> None:
        pass


def test_with_one_lane_a_new_job_creates_everything_before_the_next_starts() -> None:
    api = TwoJobApi(["a", "b"])
    rec = Reconciler(api, replace(CFG, write_lanes=1))  # type: ignore[arg-type]

    async def burst() -> None:
        await asyncio.gather(settled(rec, ("team-a", "a")), settled(rec, ("team-a", "b")))

    asyncio.run(burst())
    owners = [owner for owner, _ in api.log]
    first = owners[0]
    # Every write of the first job (Service, NetworkPolicy, store, 2 workers), then the other's.
    assert owners == [first] * (len(owners) // 2) + [o for o in owners if o != first]

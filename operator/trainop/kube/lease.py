"""Lease-based leader election: several operator replicas, exactly one active.

The active replica renews a coordination.k8s.io Lease; the others wait until it
stops renewing. Writes carry the resourceVersion they read, so two candidates
can never both win the same lease.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from trainop.core.lease import build_lease_spec, lease_free_for
from trainop.kube.client import Kube, KubeError

log = logging.getLogger("trainop.lease")


class LeaderElector:
    def __init__(
        self,
        kube: Kube,
        namespace: str,
        name: str,
        identity: str,
        *,
        duration: int = 15,
        renew_every: float = 5.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.kube = kube
        self.path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
        self.namespace, self.name, self.identity = namespace, name, identity
        self.duration, self.renew_every, self.clock = duration, renew_every, clock

    async def try_acquire(self) -> bool:
        """One attempt to take or renew the lease. True if we hold it afterwards."""
        try:
            lease = await self.kube.request("get", f"{self.path}/{self.name}", resource="leases")
        except KubeError as exc:
            if exc.status != 404:
                raise
            lease = None
        now = self.clock()
        if not lease_free_for(lease, self.identity, now):
            return False
        spec = build_lease_spec(lease, self.identity, now, self.duration)
        try:
            if lease is None:
                body = {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": spec,
                }
                await self.kube.request("create", self.path, resource="leases", body=body)
            else:
                await self.kube.request(
                    "update",
                    f"{self.path}/{self.name}",
                    resource="leases",
                    body={**lease, "spec": spec},
                )
        except KubeError as exc:
            if exc.status == 409:  # someone else wrote first
                return False
            raise
        return True

    async def acquire(self) -> None:
        while not await self.try_acquire():  # noqa: ASYNC110 (polling the API server, not a local flag)
            await asyncio.sleep(self.renew_every)
        log.info("%s leads (lease %s/%s)", self.identity, self.namespace, self.name)

    async def hold(self, lost: asyncio.Event) -> None:
        """Renew until a renewal has failed for a whole lease duration, then set `lost`."""
        last_ok = asyncio.get_running_loop().time()
        while True:
            await asyncio.sleep(self.renew_every)
            try:
                ok = await self.try_acquire()
            except (KubeError, OSError, TimeoutError) as exc:
                log.warning("lease renewal failed: %s", exc)
                ok = False
            now = asyncio.get_running_loop().time()
            if ok:
                last_ok = now
            elif not ok and (now - last_ok >= self.duration or await self._taken()):
                log.error("lost the lease %s/%s; stopping", self.namespace, self.name)
                lost.set()
                return

    async def release(self) -> None:
        """Hand the lease over at once on a clean shutdown, instead of making the
        standby wait out the lease duration (rolling upgrades)."""
        try:
            lease = await self.kube.request("get", f"{self.path}/{self.name}", resource="leases")
            spec = dict(lease.get("spec") or {})
            if spec.get("holderIdentity") != self.identity:
                return
            spec["holderIdentity"] = ""
            await self.kube.request(
                "update",
                f"{self.path}/{self.name}",
                resource="leases",
                body={**lease, "spec": spec},
            )
        except (KubeError, OSError) as exc:
            log.warning("could not release the lease: %s", exc)

    async def _taken(self) -> bool:
        try:
            lease = await self.kube.request("get", f"{self.path}/{self.name}", resource="leases")
        except (KubeError, OSError):
            return False
        holder = (lease.get("spec") or {}).get("holderIdentity")
        return bool(holder) and holder != self.identity

"""Lease-based leader election: several operator replicas, exactly one active.

The active replica renews a coordination.k8s.io Lease every retry period and
stops leading once it could not for the renew deadline; the others take the
lease only after watching it unchanged for a whole lease duration (decisions in
core/lease.py). Writes carry the resourceVersion they read, so two candidates
can never both win the same lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from trainop.core.lease import (
    LeaseTiming,
    Observation,
    assess_health,
    build_lease_spec,
    keeps_leading,
    may_take,
    observe_lease,
)
from trainop.kube.client import Kube, KubeError

log = logging.getLogger("trainop.lease")
_TRANSIENT = (KubeError, OSError, TimeoutError)


class LeaderElector:
    def __init__(
        self,
        kube: Kube,
        namespace: str,
        name: str,
        identity: str,
        *,
        timing: LeaseTiming | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.kube = kube
        self.path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
        self.namespace, self.name, self.identity = namespace, name, identity
        self.timing = timing or LeaseTiming()
        self.clock, self.wall_clock = clock, wall_clock
        self.observed: Observation | None = None
        # Read by the metrics server's thread (health); plain attribute reads are atomic.
        self.leading = False
        self.heartbeat: float | None = None
        # When the lease was last taken or renewed (self.clock): the fence reads it.
        self.renewed_at: float | None = None
        # Set the moment leadership is lost or can no longer be proven.
        self.lost = asyncio.Event()

    async def try_acquire(self) -> bool:
        """One attempt to take or renew the lease. True if we hold it afterwards."""
        try:
            lease = await self.kube.request("get", f"{self.path}/{self.name}", resource="leases")
        except KubeError as exc:
            if exc.status != 404:
                raise
            lease = None
        now = self.clock()
        self.observed = observe_lease(lease, self.observed, now)
        if not may_take(self.observed, self.identity, now):
            return False
        spec = build_lease_spec(lease, self.identity, self.wall_clock(), int(self.timing.duration))
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
        while True:
            try:
                if await self.try_acquire():
                    break
            except _TRANSIENT as exc:  # an API server restart must not kill a standby
                log.warning("lease %s/%s: %s", self.namespace, self.name, exc)
            await asyncio.sleep(self.timing.retry_period)
        self.leading = True
        self.heartbeat = self.renewed_at = self.clock()
        log.info("%s leads (lease %s/%s)", self.identity, self.namespace, self.name)

    def may_write(self) -> bool:
        """The fence before every write (kube.client.Kube): True only while a renewal
        within the renew deadline proves the lease is ours, on the monotonic clock. A
        leader paused past it (SIGSTOP, a stalled VM) is refused on waking, before the
        renewal loop has noticed, and steps down at once."""
        fresh = self.renewed_at is not None and (
            self.clock() - self.renewed_at < self.timing.renew_deadline
        )
        if self.leading and fresh:
            return True
        if self.leading:
            log.error(
                "no lease renewal for %.1fs (deadline %.0fs): refusing writes and stopping",
                self.clock() - (self.renewed_at or 0.0),
                self.timing.renew_deadline,
            )
            self._step_down()
        return False

    def _step_down(self) -> None:
        self.leading = False
        self.lost.set()

    async def hold(self, lost: asyncio.Event) -> None:
        """Renew every retry period; set `lost` and return as soon as someone else
        holds the lease or no renewal succeeded for the renew deadline."""
        beat = asyncio.create_task(self._beat())
        watch = asyncio.create_task(self._relay(lost))
        last_ok = self.clock()
        try:
            while True:
                await asyncio.sleep(self.timing.retry_period)
                # No attempt may outlast the deadline: a hung request must not keep us leading.
                left = last_ok + self.timing.renew_deadline - self.clock()
                try:
                    ok = await asyncio.wait_for(self.try_acquire(), timeout=max(left, 0.0))
                except _TRANSIENT as exc:  # a TimeoutError says nothing of itself
                    log.warning("lease renewal failed: %s", str(exc) or type(exc).__name__)
                    ok = False
                now = self.clock()
                if ok and self.leading:
                    last_ok = self.renewed_at = now
                elif not self.leading or not keeps_leading(
                    self.observed, self.identity, last_ok, now, self.timing
                ):
                    log.error("lost the lease %s/%s; stopping", self.namespace, self.name)
                    self._step_down()
                    lost.set()
                    return
        finally:
            for task in (beat, watch):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _relay(self, lost: asyncio.Event) -> None:
        # A step-down by the fence stops the operator as one by the renewal loop does.
        await self.lost.wait()
        lost.set()

    def health(self) -> tuple[bool, str]:
        """For /healthz, from any thread: a leader is healthy while its loop beats."""
        return assess_health(self.leading, self.heartbeat, self.clock(), self.timing.renew_deadline)

    async def _beat(self) -> None:
        # The leader's event loop is the operator's: if this stops, so has Kopf.
        while True:
            self.heartbeat = self.clock()
            await asyncio.sleep(self.timing.retry_period / 2)

    async def release(self) -> None:
        """Hand the lease over at once on a clean shutdown, instead of making the
        standby wait out the lease duration (rolling upgrades)."""
        if not self.may_write():
            return  # not provably ours: someone else may hold it by now
        self.leading = False
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

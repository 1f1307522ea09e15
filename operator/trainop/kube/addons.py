"""The APIs of add-ons a job may use and a cluster may lack: Kueue's Workloads (and the
ResourceFlavors and PriorityClass they name), and gang schedulers' PodGroups.

Asked only for jobs that use them (a queue label, spec.scheduling.gang). Whether an API is
served is remembered for a while: an add-on may be installed, or removed, while jobs wait.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from trainop.api import constants as c
from trainop.core import gang, kueue
from trainop.core.build import JobRef
from trainop.core.plan import WorkloadWrite
from trainop.kube.client import Kube, KubeError

log = logging.getLogger("trainop.addons")
# How long an answer to "is this API served?" is trusted.
SERVED_MEMORY_SECONDS = 30.0
# A refused Workload write is tried again after this long (the Event says why).
REFUSED_RETRY_SECONDS = 30.0


@dataclass(frozen=True)
class WriteOutcome:
    retry_after: float | None = None  # seconds until the job must be looked at again
    refused: str | None = None  # the API server's message, for a Warning Event


class AddOns:
    def __init__(self, kube: Kube, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.kube = kube
        self.clock = clock
        # apiVersion -> (served, clock() of the answer).
        self.served: dict[str, tuple[bool, float]] = {}

    async def serves(self, api_version: str) -> bool:
        known = self.served.get(api_version)
        if known is not None and self.clock() - known[1] < SERVED_MEMORY_SECONDS:
            return known[0]
        served = await self.kube.serves(api_version)
        self.served[api_version] = (served, self.clock())
        return served

    async def observe_queue(self, job: JobRef, priority_class: str | None) -> kueue.QueueView:
        """Kueue's side of a queued job: its Workload, the flavors it was admitted on and
        the value of its PriorityClass (a new Workload must carry it)."""
        if not await self.serves(c.KUEUE_API_VERSION):
            return kueue.QueueView(served=False)
        raw = await self.kube.get_namespaced(
            c.KUEUE_API_VERSION, "workloads", job.namespace, kueue.workload_name(job)
        )
        wl = kueue.parse_workload(raw) if raw is not None else None
        if wl is not None and wl.owner_uid != job.uid:
            wl = None  # a previous job's of the same name, on its way out with it
        flavors: dict[str, kueue.Flavor] = {}
        for assignment in wl.assignments.values() if wl is not None else ():
            for flavor in set(assignment.flavors.values()) - set(flavors):
                got = await self.kube.get_cluster_scoped(
                    c.KUEUE_API_VERSION, "resourceflavors", flavor
                )
                if got is not None:
                    flavors[flavor] = kueue.parse_flavor(got)
        priority, missing = None, False
        if priority_class is not None and wl is None:
            pc = await self.kube.get_cluster_scoped(
                "scheduling.k8s.io/v1", "priorityclasses", priority_class
            )
            priority, missing = (int(pc.get("value", 0)), False) if pc else (None, True)
        return kueue.QueueView(
            served=True,
            workload=wl,
            flavors=flavors,
            priority=priority,
            priority_class_missing=missing,
        )

    async def observe_gang(self, job: JobRef) -> gang.GangView:
        """Which PodGroup APIs the cluster serves and the job's PodGroup under each."""
        served = {api: await self.serves(api) for api in gang.APIS}
        groups = {
            api: await self.kube.get_namespaced(
                api, "podgroups", job.namespace, gang.pod_group_name(job)
            )
            for api, yes in served.items()
            if yes
        }
        return gang.GangView(served=served, pod_groups=groups)

    async def write_workload(self, namespace: str, write: WorkloadWrite) -> WriteOutcome:
        """One write to a job's Workload: look again at once after a conflict or a
        Workload (or API) gone meanwhile, later after a refusal."""
        try:
            if write.verb == "create":
                await self.kube.create(write.body)
            elif write.verb == "delete":
                await self.kube.delete_workload(namespace, write.name, write.uid)
            elif write.verb == "patch":
                await self.kube.patch_workload(namespace, write.name, write.body)
            else:
                await self.kube.patch_workload_status(namespace, write.name, write.body)
        except KubeError as exc:
            if exc.status in (404, 409):
                self.served.pop(c.KUEUE_API_VERSION, None)
                return WriteOutcome(retry_after=0.0)
            if not exc.refused:
                raise
            log.warning("Workload %s/%s: %s refused: %s", namespace, write.name, write.verb, exc)
            return WriteOutcome(
                retry_after=REFUSED_RETRY_SECONDS, refused=f"Workload {write.name}: {exc.message}"
            )
        return WriteOutcome()

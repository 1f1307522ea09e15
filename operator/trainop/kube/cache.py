"""What the operator's watches have shown it: TrainingJobs, their pods and Services.

The reconcile reads jobs, pods and Services from here instead of GET/LIST on every
pass (an informer cache, as controller-runtime keeps). It is filled once by a LIST
per resource at start-up (`prime`), then by the watch events Kopf delivers, and by
the operator's own writes as soon as the API server answers them (write-through), so
a reconcile right after a create, delete or status write sees it even before the
watch does. That write-through is the expectations bookkeeping: a pod created or
deleted in flight is never missing from, or stale in, the next plan.

An event older than what is held (a lower resourceVersion) never replaces it: the
initial listing Kopf replays may arrive after the priming LIST or a write-through.
No I/O here; the handlers and the reconciler feed and read it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from trainop.api import constants as c

ObjDict = dict[str, Any]
Key = tuple[str, str]  # (namespace, name)
# Only what the reconcile reads is kept: managedFields alone can be most of a pod.
_DROPPED_METADATA = ("managedFields",)


class ObjectCache:
    def __init__(self) -> None:
        self.jobs: dict[Key, ObjDict] = {}
        # (namespace, job name) -> pod uid -> pod, by the pods' job label.
        self.pods: dict[Key, dict[str, ObjDict]] = {}
        self.services: dict[Key, ObjDict] = {}
        # Until primed, reads go to the API server: an empty cache is not an empty cluster.
        self.primed = False

    # --- feeding ---------------------------------------------------------------------
    def prime(
        self, jobs: Iterable[ObjDict], pods: Iterable[ObjDict], services: Iterable[ObjDict]
    ) -> None:
        for job in jobs:
            self.put_job(job)
        for pod in pods:
            self.put_pod(pod)
        for svc in services:
            self.put_service(svc)
        self.primed = True

    def put_job(self, body: Mapping[str, Any]) -> None:
        job = _slim(body)
        _put(self.jobs, _key(job), job)

    def drop_job(self, namespace: str, name: str) -> None:
        self.jobs.pop((namespace, name), None)

    def put_pod(self, body: Mapping[str, Any], *, deleted: bool = False) -> None:
        pod = _slim(body)
        job = (pod["metadata"].get("labels") or {}).get(c.LABEL_JOB)
        uid = pod["metadata"].get("uid")
        if not job or not uid:
            return
        key = (pod["metadata"]["namespace"], job)
        held = self.pods.setdefault(key, {})
        if deleted:
            old = held.get(uid)
            if old is None or _newer_or_same(pod, old):
                held.pop(uid, None)
            if not held:
                self.pods.pop(key, None)
            return
        _put(held, uid, pod)

    def put_child(self, body: Mapping[str, Any], *, deleted: bool = False) -> None:
        """A pod or a Service of a job, as a watch event or a write answered it."""
        if body.get("kind") == "Service":
            self.put_service(body, deleted=deleted)
        else:
            self.put_pod(body, deleted=deleted)

    def pod_deleting(self, namespace: str, job: str, uid: str, stamp: str) -> None:
        """Our delete was accepted: the pod is going, whatever the watch says yet."""
        pod = self.pods.get((namespace, job), {}).get(uid)
        if pod is not None and not pod["metadata"].get("deletionTimestamp"):
            pod["metadata"]["deletionTimestamp"] = stamp

    def put_service(self, body: Mapping[str, Any], *, deleted: bool = False) -> None:
        svc = _slim(body)
        key = _key(svc)
        if deleted:
            old = self.services.get(key)
            if old is None or _newer_or_same(svc, old):
                self.services.pop(key, None)
            return
        _put(self.services, key, svc)

    # --- reading ---------------------------------------------------------------------
    def job(self, namespace: str, name: str) -> ObjDict | None:
        return self.jobs.get((namespace, name))

    def job_pods(self, namespace: str, job: str) -> list[ObjDict]:
        return list(self.pods.get((namespace, job), {}).values())

    def service(self, namespace: str, name: str) -> ObjDict | None:
        return self.services.get((namespace, name))


def _key(obj: Mapping[str, Any]) -> Key:
    meta = obj["metadata"]
    return (meta["namespace"], meta["name"])


def _slim(body: Mapping[str, Any]) -> ObjDict:
    """A plain dict copy of the object without the fields nothing reads."""
    obj = {k: v for k, v in dict(body).items() if k != "kind" or v}
    meta = {k: v for k, v in dict(obj.get("metadata") or {}).items() if k not in _DROPPED_METADATA}
    obj["metadata"] = meta
    return obj


def _version(obj: Mapping[str, Any]) -> int | None:
    try:
        return int(obj["metadata"].get("resourceVersion") or "")
    except ValueError:
        return None


def _newer_or_same(new: Mapping[str, Any], old: Mapping[str, Any]) -> bool:
    """resourceVersions are etcd revisions: compare them where both are numbers
    (Kubernetes calls them opaque, so anything else counts as newer)."""
    a, b = _version(new), _version(old)
    return a is None or b is None or a >= b


def _put(store: dict[Any, ObjDict], key: Any, obj: ObjDict) -> None:
    old = store.get(key)
    if old is None or _newer_or_same(obj, old):
        store[key] = obj

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

Only what the reconcile reads is held. A pod is parsed once, when it arrives, into
the view the core decides on (core/observe.ObservedPod) plus its owners: the pod
spec the operator wrote itself, managedFields and the kubelet's details were most
of the memory per job, and re-parsing eight pods on every reconcile most of its CPU.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from trainop.api import constants as c
from trainop.core.observe import ObservedPod, parse_pod

ObjDict = dict[str, Any]
Key = tuple[str, str]  # (namespace, name)
# Nothing reads these; managedFields can be most of an object, and kubectl's
# last-applied annotation is a second copy of a job's spec. (A status write sends the
# job back without them: the API server keeps everything but the status as stored.)
_DROPPED_METADATA = ("managedFields",)
GONE_MAX = 10_000  # tombstones kept; the watch removes each within seconds
_DROPPED_ANNOTATIONS = ("kubectl.kubernetes.io/last-applied-configuration",)


@dataclass(frozen=True, slots=True)
class CachedPod:
    """A pod as the reconcile needs it: parsed, with the uids of its owners (a job
    recreated under the same name must not adopt the previous job's pods)."""

    version: int | None  # resourceVersion, to keep the newest
    owners: tuple[str, ...]
    pod: ObservedPod


class ObjectCache:
    def __init__(self) -> None:
        self.jobs: dict[Key, ObjDict] = {}
        # (namespace, job name) -> pod uid -> pod, by the pods' job label.
        self.pods: dict[Key, dict[str, CachedPod]] = {}
        self.services: dict[Key, ObjDict] = {}
        # uid -> resourceVersion of pods we deleted that were gone at once (pod_deleted).
        self._gone: dict[str, int | None] = {}
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
        meta = body.get("metadata") or {}
        job = (meta.get("labels") or {}).get(c.LABEL_JOB)
        uid = meta.get("uid")
        if not job or not uid:
            return
        key = (meta["namespace"], job)
        old = self.pods.get(key, {}).get(uid)
        version = _version(body)
        if uid in self._gone:
            if deleted:
                del self._gone[uid]  # the watch caught up: the tombstone has done its job
            if deleted or _newer_or_same_version(self._gone.get(uid), version):
                return
        if old is not None and not _newer_or_same_version(version, old.version):
            return  # a replayed listing or a late event: what is held is newer
        if old is not None and not deleted and version is not None and version == old.version:
            return  # the same state again; keep what we know beyond it (our own delete)
        held = self.pods.setdefault(key, {})
        if deleted:
            held.pop(uid, None)
        else:
            owners = tuple(str(r.get("uid")) for r in meta.get("ownerReferences") or [])
            held[uid] = CachedPod(version, owners, parse_pod(dict(body)))
        if not held:
            self.pods.pop(key, None)

    def put_child(self, body: Mapping[str, Any], *, deleted: bool = False) -> None:
        """A pod or a Service of a job, as a watch event or a write answered it."""
        if body.get("kind") == "Service":
            self.put_service(body, deleted=deleted)
        else:
            self.put_pod(body, deleted=deleted)

    def pod_deleted(self, namespace: str, job: str, uid: str, when: datetime) -> bool:
        """Our delete was accepted. A pod that had finished (Failed, Succeeded) or was
        never scheduled is removed by the API server at once, with no grace period
        (pkg/registry/core/pod: CheckGracefulDelete): it is dropped, and True says its
        name is free. Any other pod is going, whatever the watch says yet."""
        held = self.pods.get((namespace, job), {})
        entry = held.get(uid)
        if entry is None:
            return False
        if entry.pod.finished or not entry.pod.node_name:
            del held[uid]
            if not held:
                self.pods.pop((namespace, job), None)
            # A late event of the pod as it was must not bring it back.
            if len(self._gone) > GONE_MAX:
                self._gone.clear()
            self._gone[uid] = entry.version
            return True
        if not entry.pod.deleting:
            pod = replace(entry.pod, deleting=True, deletion_time=when, delete_requested=when)
            held[uid] = replace(entry, pod=pod)
        return False

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

    def job_pods(self, namespace: str, job: str) -> list[CachedPod]:
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
    annotations = meta.get("annotations")
    if annotations and any(a in annotations for a in _DROPPED_ANNOTATIONS):
        meta["annotations"] = {
            k: v for k, v in annotations.items() if k not in _DROPPED_ANNOTATIONS
        }
    obj["metadata"] = meta
    return obj


def _version(obj: Mapping[str, Any]) -> int | None:
    try:
        return int(obj["metadata"].get("resourceVersion") or "")
    except ValueError:
        return None


def _newer_or_same(new: Mapping[str, Any], old: Mapping[str, Any]) -> bool:
    return _newer_or_same_version(_version(new), _version(old))


def _newer_or_same_version(new: int | None, old: int | None) -> bool:
    """resourceVersions are etcd revisions: compare them where both are numbers
    (Kubernetes calls them opaque, so anything else counts as newer)."""
    return new is None or old is None or new >= old


def _put(store: dict[Any, ObjDict], key: Any, obj: ObjDict) -> None:
    old = store.get(key)
    if old is None or _newer_or_same(obj, old):
        store[key] = obj

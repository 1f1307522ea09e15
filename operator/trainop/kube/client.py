"""Kubernetes REST calls on plain dicts, over kubernetes_asyncio's authenticated session.

Every request is counted by verb and resource (the API-requests benchmark reads
these counters), and API errors become KubeError with the server's message.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Self

from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from trainop import operator_metrics as m
from trainop.api import constants as c

ObjDict = dict[str, Any]
_PROXY_VARIABLES = (
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
)
# Tries of a request the API server answers 429 (Too Many Requests), as client-go does.
THROTTLED_TRIES = 5
_JSON = "application/json"
_MERGE = "application/merge-patch+json"
_PATHS = {
    "Pod": ("v1", "pods"),
    "Service": ("v1", "services"),
    "Event": ("v1", "events"),
    "PersistentVolumeClaim": ("v1", "persistentvolumeclaims"),
    "NetworkPolicy": ("networking.k8s.io/v1", "networkpolicies"),
    "Workload": (c.KUEUE_API_VERSION, "workloads"),
}
# Kinds that two API groups define: the object's apiVersion says which.
_GROUPED = {
    (c.VOLCANO_API_VERSION, "PodGroup"): "podgroups",
    (c.COSCHEDULING_API_VERSION, "PodGroup"): "podgroups",
}


def _resource_of(obj: Mapping[str, Any]) -> tuple[str, str]:
    grouped = _GROUPED.get((obj.get("apiVersion", ""), obj["kind"]))
    return (obj["apiVersion"], grouped) if grouped is not None else _PATHS[obj["kind"]]


@dataclass
class KubeError(Exception):
    status: int
    reason: str
    message: str

    def __str__(self) -> str:
        return f"{self.status} {self.reason}: {self.message}"

    @property
    def refused(self) -> bool:
        """The server judged the request itself (malformed, forbidden by admission, RBAC or
        quota, too large, invalid): sending it again unchanged gets the same answer.
        Expired credentials (401), conflicts (409), throttling (429) and server errors
        (5xx) are worth retrying as they are."""
        return self.status in (400, 403, 413, 422) and not self.namespace_terminating

    @property
    def namespace_terminating(self) -> bool:
        """NamespaceLifecycle's answer to a create in a namespace being deleted: the job
        and its pods are going with it, so there is nothing to retry or report."""
        return self.status == 403 and "because it is being terminated" in self.message


def _ns_path(api_version: str, resource: str, namespace: str, name: str | None = None) -> str:
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = f"{base}/namespaces/{namespace}/{resource}"
    return f"{path}/{name}" if name else path


def job_path(namespace: str, name: str | None = None) -> str:
    return _ns_path(c.API_VERSION, c.PLURAL, namespace, name)


class Fenced(Exception):  # noqa: N818  (a state, not an error a caller should handle)
    """A write refused by the fence: this replica can no longer prove it leads."""


_WRITES = frozenset({"create", "update", "patch", "delete"})


class Kube:
    def __init__(self, api: Any, *, fence: Callable[[], bool] | None = None) -> None:
        self._api = api
        # Asked before every write; False means the write must not be sent (a leader
        # that cannot prove it still holds the lease). The lease's own client has none.
        self._fence = fence

    @classmethod
    async def connect(
        cls,
        kubeconfig: str | None = None,
        *,
        pool: int = 64,
        user_agent: str | None = None,
        fence: Callable[[], bool] | None = None,
    ) -> Self:
        """In-cluster service account when there is one, else the kubeconfig."""
        cfg = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        except config.ConfigException:
            await config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
        # No client-side rate limit: client-go's QPS 5 default is what makes other
        # controllers crawl. Concurrency is bounded by the connection pool instead.
        cfg.connection_pool_maxsize = pool
        api = client.ApiClient(configuration=cfg)
        if not any(os.environ.get(v) for v in _PROXY_VARIABLES):
            # kubernetes_asyncio opens its aiohttp session with trust_env=True, and with
            # it every request looks up ~/.netrc and the proxy variables in a thread pool:
            # two hops per request, 5.7% of the operator's CPU in a burst. Nothing here
            # uses netrc, and with no proxy variable set there is no proxy to find.
            api.rest_client.pool_manager._trust_env = False
        if user_agent:  # which replica sent a request, in the API server's audit log
            api.user_agent = user_agent
        return cls(api, fence=fence)

    async def close(self) -> None:
        await self._api.close()

    async def request(
        self,
        verb: str,
        path: str,
        *,
        resource: str,
        body: object = None,
        query: Mapping[str, str] | None = None,
        content_type: str = _JSON,
    ) -> ObjDict:
        method = {
            "create": "POST",
            "list": "GET",
            "get": "GET",
            "update": "PUT",
            "patch": "PATCH",
            "delete": "DELETE",
        }[verb]
        for attempt in range(1, THROTTLED_TRIES + 1):
            # Asked again before each try: a write held back by throttling must not go
            # out after this replica has lost the lease meanwhile.
            if verb in _WRITES and self._fence is not None and not self._fence():
                m.API_FENCED.labels(verb, resource).inc()
                raise Fenced(f"{verb} {resource}: not sent, this replica no longer holds the lease")
            m.API_REQUESTS.labels(verb, resource).inc()
            try:
                resp = await self._api.call_api(
                    path,
                    method,
                    query_params=list((query or {}).items()),
                    header_params={"Accept": _JSON, "Content-Type": content_type},
                    body=body,
                    auth_settings=["BearerToken"],
                    _preload_content=False,
                    _return_http_data_only=True,
                )
                raw = await resp.read()
            except ApiException as exc:  # transport-level failures
                m.API_ERRORS.labels(verb, resource, str(exc.status)).inc()
                raise _error(exc.status, exc.reason, exc.body) from None
            if resp.status == 429 and attempt < THROTTLED_TRIES:
                # The API server sheds load (max-requests-inflight, API priority and
                # fairness) and says when to come back: a loaded cluster is not an error.
                m.API_ERRORS.labels(verb, resource, "429").inc()
                await asyncio.sleep(_retry_after(resp.headers.get("Retry-After")))
                continue
            # Without preloading, kubernetes_asyncio hands back error responses as they are.
            if not 200 <= resp.status <= 299:
                m.API_ERRORS.labels(verb, resource, str(resp.status)).inc()
                raise _error(resp.status, resp.reason, raw)
            data: ObjDict = json.loads(raw) if raw else {}
            return data
        raise AssertionError("unreachable: the last try returns or raises")

    # --- TrainingJobs
    async def get_job(self, namespace: str, name: str) -> ObjDict | None:
        return await self._get_or_none(job_path(namespace, name), "trainingjobs")

    async def list_jobs(self, namespace: str | None = None) -> list[ObjDict]:
        path = job_path(namespace) if namespace else f"/apis/{c.API_VERSION}/{c.PLURAL}"
        return list((await self.request("list", path, resource="trainingjobs"))["items"])

    async def replace_job_status(self, job: ObjDict, status: ObjDict) -> ObjDict:
        """PUT the whole status with the job's resourceVersion: a concurrent writer
        makes this fail with 409 instead of being silently overwritten."""
        meta = job["metadata"]
        body = {**job, "status": status}
        return await self.request(
            "update",
            job_path(meta["namespace"], meta["name"]) + "/status",
            resource="trainingjobs/status",
            body=body,
        )

    async def patch_job(self, namespace: str, name: str, patch: ObjDict) -> ObjDict:
        return await self.request(
            "patch",
            job_path(namespace, name),
            resource="trainingjobs",
            body=patch,
            content_type=_MERGE,
        )

    async def delete_job(self, namespace: str, name: str, uid: str) -> None:
        body = {"preconditions": {"uid": uid}, "propagationPolicy": "Background"}
        await self._delete_tolerant(job_path(namespace, name), "trainingjobs", body)

    async def list_labelled(
        self, resource: str, selector: str, namespace: str | None = None
    ) -> list[ObjDict]:
        """Every object of a core/v1 resource (pods, services) with the label selector,
        in one namespace or all of them: the start-up listing of the watch cache."""
        path = _ns_path("v1", resource, namespace) if namespace else f"/api/v1/{resource}"
        data = await self.request(
            "list", path, resource=resource, query={"labelSelector": selector}
        )
        return list(data["items"])

    # --- children
    async def list_pods(self, namespace: str, selector: str) -> list[ObjDict]:
        data = await self.request(
            "list",
            _ns_path("v1", "pods", namespace),
            resource="pods",
            query={"labelSelector": selector},
        )
        return list(data["items"])

    async def create(self, obj: ObjDict, *, dry_run: bool = False) -> ObjDict | None:
        """Create; None when it already exists (a retried reconcile is not an error).

        dry_run asks the API server to run validation and every admission plugin
        (PriorityClass, quota, LimitRange, PodSecurity, webhooks) and store nothing."""
        api_version, resource = _resource_of(obj)
        path = _ns_path(api_version, resource, obj["metadata"]["namespace"])
        query = {"dryRun": "All"} if dry_run else None
        try:
            return await self.request("create", path, resource=resource, body=obj, query=query)
        except KubeError as exc:
            if exc.status == 409:
                return None
            raise

    async def delete_pod(
        self, namespace: str, name: str, uid: str, grace_seconds: int | None
    ) -> None:
        body: ObjDict = {"preconditions": {"uid": uid}}
        if grace_seconds is not None:
            body["gracePeriodSeconds"] = grace_seconds
        await self._delete_tolerant(_ns_path("v1", "pods", namespace, name), "pods", body)

    async def patch_pod_annotations(
        self, namespace: str, name: str, annotations: Mapping[str, str]
    ) -> None:
        await self.request(
            "patch",
            _ns_path("v1", "pods", namespace, name),
            resource="pods",
            body={"metadata": {"annotations": dict(annotations)}},
            content_type=_MERGE,
        )

    async def get_service(self, namespace: str, name: str) -> ObjDict | None:
        return await self._get_or_none(_ns_path("v1", "services", namespace, name), "services")

    async def get_pvc(self, namespace: str, name: str) -> ObjDict | None:
        path = _ns_path("v1", "persistentvolumeclaims", namespace, name)
        return await self._get_or_none(path, "persistentvolumeclaims")

    # --- Kueue and gang schedulers (APIs a cluster may not serve)
    async def serves(self, api_version: str) -> bool:
        """Whether the API server serves this group/version (its CRDs are installed)."""
        try:
            await self.request("get", f"/apis/{api_version}", resource="discovery")
        except KubeError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def get_namespaced(
        self, api_version: str, resource: str, namespace: str, name: str
    ) -> ObjDict | None:
        return await self._get_or_none(_ns_path(api_version, resource, namespace, name), resource)

    async def get_cluster_scoped(
        self, api_version: str, resource: str, name: str
    ) -> ObjDict | None:
        return await self._get_or_none(f"/apis/{api_version}/{resource}/{name}", resource)

    async def delete_workload(self, namespace: str, name: str, uid: str) -> None:
        path = _ns_path(c.KUEUE_API_VERSION, "workloads", namespace, name)
        body = {"preconditions": {"uid": uid}, "propagationPolicy": "Background"}
        await self._delete_tolerant(path, "workloads", body)

    async def patch_workload(self, namespace: str, name: str, patch: ObjDict) -> ObjDict:
        return await self.request(
            "patch",
            _ns_path(c.KUEUE_API_VERSION, "workloads", namespace, name),
            resource="workloads",
            body=patch,
            content_type=_MERGE,
        )

    async def patch_workload_status(self, namespace: str, name: str, patch: ObjDict) -> ObjDict:
        """A merge patch of the status; a resourceVersion in it makes a concurrent write
        by Kueue fail with 409 instead of being overwritten."""
        return await self.request(
            "patch",
            _ns_path(c.KUEUE_API_VERSION, "workloads", namespace, name) + "/status",
            resource="workloads/status",
            body=patch,
            content_type=_MERGE,
        )

    async def create_event(self, obj: ObjDict) -> None:
        await self.create(obj)

    async def _get_or_none(self, path: str, resource: str) -> ObjDict | None:
        try:
            return await self.request("get", path, resource=resource)
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    async def _delete_tolerant(self, path: str, resource: str, body: ObjDict) -> None:
        try:
            await self.request("delete", path, resource=resource, body=body)
        except KubeError as exc:
            # 404: already gone. 409: the UID precondition failed, i.e. a newer object
            # with this name exists and must not be touched.
            if exc.status not in (404, 409):
                raise


def _retry_after(header: str | None) -> float:
    """Seconds the API server asked us to wait (whole seconds), within sane bounds."""
    try:
        seconds = float(header or 1)
    except ValueError:
        seconds = 1.0
    return min(max(seconds, 0.1), 10.0)


def _error(status: object, reason: object, body: object) -> KubeError:
    """The API server's Status object says what is wrong better than the HTTP reason."""
    message, why = str(reason or ""), str(reason or "")
    try:
        parsed = json.loads(body or b"{}")  # type: ignore[arg-type]
    except (ValueError, TypeError):
        parsed = {}
    if isinstance(parsed, dict):
        message = str(parsed.get("message") or message)
        why = str(parsed.get("reason") or why)
    return KubeError(status if isinstance(status, int) else 0, why, message)

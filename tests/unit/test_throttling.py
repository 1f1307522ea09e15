"""The Kubernetes adapter under an API server that sheds load (HTTP 429): it comes back
when told to, as client-go does, instead of failing a start-up listing or a reconcile;
and a write held back meanwhile still asks the leader fence before it goes out."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from trainop.kube.client import THROTTLED_TRIES, Fenced, Kube, KubeError


class Response:
    def __init__(self, status: int, body: dict[str, Any], retry_after: str | None) -> None:
        self.status = status
        self.reason = "Too Many Requests" if status == 429 else "OK"
        self.headers = {"Retry-After": retry_after} if retry_after is not None else {}
        self._body = json.dumps(body).encode()

    async def read(self) -> bytes:
        return self._body


class SheddingApi:
    """Stands for kubernetes_asyncio's ApiClient: 429 for the first `busy` calls."""

    def __init__(self, busy: int, retry_after: str | None = "0") -> None:
        self.busy = busy
        self.retry_after = retry_after
        self.calls = 0

    async def call_api(self, path: str, method: str, **_: Any) -> Response:
        self.calls += 1
        if self.calls <= self.busy:
            message = {"message": "too many requests, please try again later"}
            return Response(429, message, self.retry_after)
        return Response(200, {"items": [], "kind": "PodList"}, None)


@pytest.mark.parametrize(
    ("busy", "retry_after", "calls"),
    [
        pytest.param(0, "0", 1, id="not-throttled"),
        pytest.param(1, "0", 2, id="throttled-once"),
        pytest.param(THROTTLED_TRIES - 1, "0", THROTTLED_TRIES, id="throttled-until-last-try"),
        pytest.param(2, "soon", 3, id="unreadable-retry-after-waits-a-second"),
    ],
)
def test_a_throttled_request_is_sent_again_until_it_is_served(
    busy: int, retry_after: str, calls: int
) -> None:
    api = SheddingApi(busy, retry_after)
    listed = asyncio.run(Kube(api).request("list", "/api/v1/pods", resource="pods"))
    assert listed["kind"] == "PodList"
    assert api.calls == calls


def test_throttled_past_every_try_is_an_error_that_says_so() -> None:
    api = SheddingApi(busy=100)
    with pytest.raises(KubeError) as err:
        asyncio.run(Kube(api).request("list", "/api/v1/pods", resource="pods"))
    assert err.value.status == 429
    assert "try again later" in str(err.value)
    assert api.calls == THROTTLED_TRIES


def test_a_write_held_back_by_throttling_is_not_sent_once_the_lease_is_lost() -> None:
    api = SheddingApi(busy=1)
    holds = iter([True, False])  # the lease is lost while the write waits to be resent
    kube = Kube(api, fence=lambda: next(holds))
    with pytest.raises(Fenced):
        asyncio.run(kube.request("create", "/api/v1/namespaces/x/pods", resource="pods", body={}))
    assert api.calls == 1  # the first try only

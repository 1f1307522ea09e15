"""Fixtures for tests against the real local control plane (hack/localcluster.py).

The cluster starts once per session and stops at the end unless it was already
running (then it is left as found). Every test gets its own namespace.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.procs import stop_group

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("localcluster", ROOT / "hack" / "localcluster.py")
assert _spec is not None
assert _spec.loader is not None
localcluster = importlib.util.module_from_spec(_spec)
sys.modules["localcluster"] = localcluster  # dataclasses look their module up there
_spec.loader.exec_module(localcluster)


T = TypeVar("T")


def wait_for(what: str, fn: Callable[[], T | None], timeout: float = 30.0, every: float = 0.2) -> T:
    """Poll until fn returns something truthy; fail with the last value seen."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = fn()
        except RuntimeError as exc:  # a kubectl error: the object is not there yet
            last = exc
        else:
            if last:
                return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def wait_until(
    what: str, get: Callable[[], T], ok: Callable[[T], bool], timeout: float = 30.0
) -> T:
    """Poll get() until ok(value); return that value."""
    box: list[T] = []

    def probe() -> bool:
        value = get()
        if ok(value):
            box.append(value)
            return True
        return False

    wait_for(what, probe, timeout)
    return box[0]


class Cluster:
    def __init__(self, kubeconfig: Path, bins: Any) -> None:
        self.kubeconfig = kubeconfig
        self.bins = bins
        self.env = {**os.environ, "KUBECONFIG": str(kubeconfig)}

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        res = subprocess.run(
            [str(self.bins.kubectl), *args],
            input=input,
            capture_output=True,
            text=True,
            env=self.env,
            check=False,
            timeout=60,
        )
        if check and res.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed: {res.stderr.strip()}")
        return res.stdout if res.returncode == 0 else res.stderr

    def apply(self, obj: dict[str, Any], ns: str | None = None) -> str:
        args = ["apply", "-f", "-"] + (["-n", ns] if ns else [])
        return self.kubectl(*args, input=json.dumps(obj))

    def get(self, kind: str, name: str, ns: str) -> dict[str, Any]:
        return dict(json.loads(self.kubectl("get", kind, name, "-n", ns, "-o", "json")))

    def get_or_none(self, kind: str, name: str, ns: str) -> dict[str, Any] | None:
        out = self.kubectl("get", kind, name, "-n", ns, "-o", "json", "--ignore-not-found")
        return dict(json.loads(out)) if out.strip() else None

    def list(self, kind: str, ns: str, selector: str = "") -> list[dict[str, Any]]:
        args = ["get", kind, "-n", ns, "-o", "json"] + (["-l", selector] if selector else [])
        return list(json.loads(self.kubectl(*args))["items"])

    def events(self, ns: str, name: str) -> list[dict[str, Any]]:
        items = self.list("events", ns)
        return [e for e in items if e["involvedObject"].get("name") == name]


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    was_up = localcluster.running()
    kubeconfig = localcluster.up()
    yield Cluster(kubeconfig, localcluster.bins(build=False))
    if not was_up and not os.environ.get("TRAINOP_KEEP_CLUSTER"):
        localcluster.down()


@pytest.fixture(scope="session")
def crd(cluster: Cluster) -> Cluster:
    # --force-conflicts: a kept cluster may hold a CRD that helm (another field manager) applied.
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    wait_established(cluster, "trainingjobs.trainop.dev")
    return cluster


def wait_established(cluster: Cluster, name: str) -> None:
    def established() -> bool:
        # `kubectl wait` errors out (instead of waiting) while the new CRD has no
        # conditions yet, which a fresh cluster takes a moment to write.
        crd = cluster.get_or_none("crd", name, "")
        conds = ((crd or {}).get("status") or {}).get("conditions") or []
        return any(x["type"] == "Established" and x["status"] == "True" for x in conds)

    wait_for(f"the CRD {name} established", established, timeout=60)
    # Established is not yet servable: until the API server's watch cache for the new
    # resource is initialized, a LIST answers 429 "storage is (re)initializing".
    wait_for(f"{name} listable", lambda: cluster.kubectl("get", name, "-A", "-o", "name") or True)


@pytest.fixture
def ns(cluster: Cluster) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    wait_for("default service account", lambda: cluster.get_or_none("sa", "default", name))
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


class Operator:
    """The real operator (`trainop operator`) as a child process."""

    def __init__(self, cluster: Cluster, log: Path) -> None:
        self.cluster = cluster
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.metrics_port = localcluster.free_port()
        self.extra_env: dict[str, str] = {}

    def start(self, args: list[str] | None = None, **env: str) -> None:
        self.stop()
        full = {
            **self.cluster.env,
            "TRAINOP_METRICS_PORT": str(self.metrics_port),
            "TRAINOP_METRICS_ADDR": "127.0.0.1",
            "TRAINOP_NODE_LOST_SECONDS": "3",
            "TRAINOP_EXPORTER_IMAGE": "trainop:test",
            **env,
        }
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "trainop.cli", "operator", *(args or [])],
                env=full,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for("operator metrics endpoint", self._serving, timeout=30)

    def _serving(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"operator exited: {self.log.read_text()[-3000:]}")
        try:
            return "trainop_operator" in self.metrics()
        except OSError:
            return False

    def metrics(self) -> str:
        import urllib.request

        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=2) as resp:
            return str(resp.read().decode())

    def kill(self) -> None:
        """SIGKILL: no cleanup handlers, like a crashed or evicted operator pod."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc, grace=15)
        self.proc = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


@pytest.fixture(scope="session")
def operator(crd: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    op = Operator(crd, tmp_path_factory.mktemp("operator") / "operator.log")
    op.start()
    yield op
    op.stop()

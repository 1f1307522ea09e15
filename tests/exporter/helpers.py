"""Factories and probes for the exporter tests: run dirs, fake GPUs, scrapes, processes."""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from trainop.exporter.collector import TrainopCollector
from trainop.exporter.exposition import TextRenderer
from trainop.exporter.fake_nvml import FakeGpu, FakeNVML
from trainop.exporter.gpu import GpuReader
from trainop.exporter.nvml import Nvml
from trainop.exporter.progress import DEFAULT_STALE_SECONDS
from trainop.exporter.rapl import RaplReader
from trainop_runtime import contract

NOW = 1_700_000_000.0
IDENTITY = {
    "trainingjob": "llama",
    "trainingjob_namespace": "team-a",
    "trainingjob_pod": "llama-worker-0",
}
# The node the pod runs on, as the downward API hands it to the sidecar.
NODE = "gpu-node-7"
ENV_IDENTITY = {
    contract.ENV_JOB_NAME: "llama",
    contract.ENV_JOB_NAMESPACE: "team-a",
    contract.ENV_POD_NAME: "llama-worker-0",
}


def uuid(i: int) -> str:
    return f"GPU-0000000{i}-1111-2222-3333-444444444444"


def gpus(count: int, **overrides: Any) -> list[FakeGpu]:
    return [FakeGpu(uuid=uuid(i), **overrides) for i in range(count)]


def write_gpus_file(run_dir: Path, uuids: list[str]) -> None:
    (run_dir / contract.GPUS_FILE).write_text(json.dumps({"uuids": uuids}))


def progress_doc(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        contract.P_STEP: 120,
        contract.P_TOTAL_STEPS: 1000,
        contract.P_SAMPLES: 3840,
        contract.P_LOSS: 2.5,
        contract.P_STEP_SECONDS: 0.4,
        contract.P_SAMPLES_PER_SECOND: 80.0,
        contract.P_RESTARTS: 1,
        contract.P_WORLD_SIZE: 4,
        contract.P_CHECKPOINT_STEP: 100,
        contract.P_CHECKPOINT_TIME: NOW - 90,
        contract.P_TIME: NOW - 2,
    }
    doc.update(overrides)
    return {k: v for k, v in doc.items() if v is not None}


def write_progress(run_dir: Path, **overrides: Any) -> None:
    (run_dir / contract.PROGRESS_FILE).write_text(json.dumps(progress_doc(**overrides)))


def fake_powercap(root: Path, zones: Mapping[str, tuple[str, int, int]]) -> Path:
    """A sysfs-like powercap dir: zone -> (name, energy_uj, max_energy_range_uj)."""
    for zone, (name, energy, max_range) in zones.items():
        d = root / zone
        d.mkdir(parents=True, exist_ok=True)
        (d / "name").write_text(f"{name}\n")
        (d / "energy_uj").write_text(f"{energy}\n")
        (d / "max_energy_range_uj").write_text(f"{max_range}\n")
    return root


def make_collector(
    run_dir: Path,
    fake: FakeNVML,
    *,
    now: float = NOW,
    all_gpus: bool = False,
    powercap: Path | None = None,
    stale_after: float = DEFAULT_STALE_SECONDS,
    node: str | None = NODE,
) -> TrainopCollector:
    return TrainopCollector(
        run_dir=run_dir,
        gpu_reader=GpuReader(
            lambda: Nvml(fake), monotonic=time.monotonic, retry_seconds=0.0, rescan_seconds=0.0
        ),
        rapl_reader=RaplReader(powercap),
        identity=IDENTITY,
        node=node,
        all_gpus=all_gpus,
        stale_after_seconds=stale_after,
        clock=lambda: now,
        timer=lambda: 0.0,
    )


@dataclass
class Exposition:
    """A parsed /metrics body."""

    text: str

    def __post_init__(self) -> None:
        self.families = list(text_string_to_metric_families(self.text))
        self.samples: list[Sample] = [s for f in self.families for s in f.samples]

    def series(self, name: str, **labels: str) -> list[Sample]:
        return [
            s
            for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        ]

    def value(self, name: str, **labels: str) -> float | None:
        """The one sample matching; None if there is none."""
        found = self.series(name, **labels)
        if len(found) > 1:
            raise AssertionError(f"{len(found)} series match {name} {labels}")
        return found[0].value if found else None

    def names(self) -> set[str]:
        return {s.name for s in self.samples}


def scrape(collector: TrainopCollector) -> Exposition:
    """A GPU sample, then what /metrics serves for this collector alone (no process metrics).

    The sampler's thread takes samples in the real exporter; here each scrape
    has a fresh one, so a test sees each NVML reading it sets up.
    """
    collector.sample_gpus()
    return Exposition(TextRenderer().render(collector.collect()).decode())


# --- real processes ---------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310  # 127.0.0.1 only
        return int(resp.status), resp.read().decode()


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
        except Exception as err:  # the thing may not be up yet
            last_error = err
        else:
            if result:
                return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last_error})")


@dataclass
class ExporterProcess:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    def scrape(self) -> Exposition:
        status, body = http_get(self.metrics_url)
        assert status == 200
        return Exposition(body)

    def log(self) -> str:
        return self.log_path.read_text()


@contextmanager
def exporter_process(
    run_dir: Path, *args: str, env: Mapping[str, str] | None = None
) -> Iterator[ExporterProcess]:
    """``python -m trainop.exporter`` on 127.0.0.1, stopped with SIGTERM afterwards."""
    port = free_port()
    log_path = run_dir.parent / f"exporter-{port}.log"
    full_env = {**os.environ, **ENV_IDENTITY, **(env or {})}
    argv = [sys.executable, "-m", "trainop.exporter", "--address", "127.0.0.1"]
    argv += ["--port", str(port), "--run-dir", str(run_dir), *args]
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, env=full_env)
    exporter = ExporterProcess(proc, port, log_path)
    try:
        wait_until(
            lambda: proc.poll() is not None or http_get(f"http://127.0.0.1:{port}/healthz")[0],
            timeout=30,
            what="the exporter to listen",
        )
        assert proc.poll() is None, f"exporter exited early:\n{exporter.log()}"
        yield exporter
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def required_tool(name: str) -> str:
    """The path of a Prometheus binary; a missing one fails the test, saying how to install it."""
    # Next to the venv's python first: pytest may run without the venv on PATH.
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.fail(
            f"{name} is not installed: run hack/setup.sh (it installs the Debian package "
            "`prometheus`, which ships prometheus and promtool), or apt-get install prometheus"
        )
    return found


GPU_CHECK = Path(__file__).parents[2] / "bench" / "exporter" / "gpu_check.py"


@functools.cache
def load_gpu_check() -> ModuleType:
    """bench/exporter/gpu_check.py as a module (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location("gpu_check", GPU_CHECK)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module

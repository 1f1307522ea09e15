"""The live-Prometheus scenario's parts, shared by the panel test and the previews:
real metrics sidecars (`python -m trainop.exporter` with FakeNVML and a live
progress.json), a real Prometheus scraping them and the operator, and Grafana's way of
filling a query's variables."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.chart.helpers import CHART, MONITORING_ON, template, tool, write_rule_file
from tests.cluster.conftest import localcluster, wait_for
from tests.procs import stop_group
from trainop.exporter.fake_nvml import demo_gpus
from trainop_runtime import contract

JOB = "panels"
SCRAPE = "1s"
# How Grafana fills its built-in variables; the ranges fit the ~40 s of samples
# this test collects at a 1 s scrape interval.
GRAFANA = {
    "$__rate_interval": "10s",
    "$__interval_ms": "5000",
    "$__interval": "5s",
    "$__range": "30s",
    "$idle_threshold": "0.05",
}


def http_json(host: str, path: str) -> Any:
    with urllib.request.urlopen(f"http://{host}{path}", timeout=10) as resp:
        return json.loads(resp.read())


def _write_atomic(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    tmp.replace(path)


class Trainer(threading.Thread):
    """Stands in for a pod's LOCAL_RANK 0: writes progress.json as training goes on."""

    def __init__(self, run_dir: Path, restarts_at: float) -> None:
        super().__init__(daemon=True)
        self.run_dir = run_dir
        self.restarts_at = restarts_at
        self.stop = threading.Event()
        # Set: the trainer hangs, writing nothing more (as ranks stuck in a collective).
        self.hang = threading.Event()
        # Set: in-place worker-group restarts so far, instead of the one at restarts_at.
        self.restarts: int | None = None

    def run(self) -> None:
        started = time.time()
        step = 0
        while not self.stop.wait(0.5):
            if self.hang.is_set():
                continue
            step += 5
            now = time.time()
            _write_atomic(
                self.run_dir / contract.PROGRESS_FILE,
                {
                    contract.P_STEP: step,
                    contract.P_TOTAL_STEPS: 100_000,
                    contract.P_SAMPLES: step * 64,
                    contract.P_LOSS: 4.0 / (1 + step / 100),
                    contract.P_STEP_SECONDS: 0.1,
                    contract.P_SAMPLES_PER_SECOND: 640.0,
                    # One in-place worker-group restart along the way.
                    contract.P_RESTARTS: (
                        int(now - started > self.restarts_at)
                        if self.restarts is None
                        else self.restarts
                    ),
                    contract.P_WORLD_SIZE: 2,
                    contract.P_CHECKPOINT_STEP: step - step % 50,
                    contract.P_CHECKPOINT_TIME: started,
                    contract.P_TIME: now,
                },
            )


@contextmanager
def process(argv: list[str], log: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env},
            start_new_session=True,
        )  # fmt: skip
    try:
        yield proc
    finally:
        stop_group(proc, grace=15)


@dataclass
class Sidecar:
    """A running metrics sidecar and the handles a test steers it by."""

    port: int
    proc: subprocess.Popen[bytes]
    trainer: Trainer
    # FakeNVML's control file (fake_nvml.SteeredFakeNVML): write it to change the GPU.
    control: Path

    def steer_gpu(self, **fields: Any) -> None:
        _write_atomic(self.control, fields)


def sidecar(stack: ExitStack, tmp: Path, ns: str, slot: int) -> int:
    """One worker pod of the panel job's metrics sidecar, with its own GPU."""
    return start_sidecar(stack, tmp, ns, JOB, slot).port


def start_sidecar(
    stack: ExitStack, tmp: Path, ns: str, job: str, slot: int, *extra: str
) -> Sidecar:
    """One worker pod's metrics sidecar, with that pod's identity and GPU `slot` of two."""
    name = f"{job}-{slot}"
    run_dir = tmp / f"run-{name}"
    run_dir.mkdir()
    (run_dir / contract.GPUS_FILE).write_text(json.dumps({"uuids": [demo_gpus(2)[slot].uuid]}))
    trainer = Trainer(run_dir, restarts_at=5.0)
    trainer.start()
    stack.callback(trainer.stop.set)
    port = localcluster.free_port()
    control = tmp / f"nvml-{name}.json"
    argv = [sys.executable, "-m", "trainop.exporter", "--address", "127.0.0.1"]
    argv += ["--port", str(port), "--run-dir", str(run_dir), "--fake-nvml-gpus", "2"]
    argv += ["--powercap-root", "", "--fake-nvml-control", str(control), *extra]
    env = {
        contract.ENV_JOB_NAME: job,
        contract.ENV_JOB_NAMESPACE: ns,
        contract.ENV_POD_NAME: f"{job}-worker-{slot}",
    }
    log = tmp / f"sidecar-{name}.log"
    proc = stack.enter_context(process(argv, log, env))

    def serving() -> bool:
        assert proc.poll() is None, log.read_text()
        try:
            return (
                "trainop_gpu_up"
                in urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
                .read()
                .decode()
            )
        except OSError:
            return False

    wait_for(f"sidecar {name}", serving, timeout=30)
    return Sidecar(port, proc, trainer, control)


def prometheus(
    stack: ExitStack,
    tmp: Path,
    operator_port: int,
    sidecar_ports: list[int],
    interval: str = SCRAPE,
) -> str:
    scrape_configs = [
        {
            "job_name": "trainop-operator",
            "static_configs": [{"targets": [f"127.0.0.1:{operator_port}"]}],
        },
        {
            "job_name": "trainop-workers",
            "static_configs": [{"targets": [f"127.0.0.1:{p}" for p in sidecar_ports]}],
        },
    ]
    rules = [write_rule_file(tmp / "rules.yaml")]
    return start_prometheus(stack, tmp, rules, scrape_configs, interval=interval)


def start_prometheus(
    stack: ExitStack,
    tmp: Path,
    rules: list[Path],
    scrape_configs: list[dict[str, Any]],
    interval: str = SCRAPE,
) -> str:
    """A real Prometheus scraping and evaluating the rule files `rules` every `interval`;
    its host:port."""
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(r) for r in rules],
        "scrape_configs": scrape_configs,
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = localcluster.free_port()
    argv = [
        tool("prometheus", "apt-get install prometheus (make setup)"),
        f"--config.file={tmp / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    stack.enter_context(process(argv, tmp / "prometheus.log", {}))
    host = f"127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return urllib.request.urlopen(f"http://{host}/-/ready", timeout=2).status == 200
        except OSError:
            return False

    wait_for("prometheus ready", ready, timeout=60)
    return host


def grafana_at(scrape: float) -> dict[str, str]:
    """Grafana's variables for a Prometheus data source scraping every `scrape` seconds:
    $__rate_interval is max($__interval + scrape, 4 x scrape), with $__interval at the
    scrape interval (a panel's max data points rarely make it larger)."""
    return {
        "$__rate_interval": f"{max(2 * scrape, 4 * scrape):g}s",
        "$__interval_ms": str(int(scrape * 1000)),
        "$__interval": f"{scrape:g}s",
        "$__range": "10m",
        "$idle_threshold": "0.05",
    }


def grafana_expr(expr: str, ns: str, variables: dict[str, str] | None = None) -> str:
    out = expr.replace("$namespace", ns).replace("$trainingjob", JOB)
    for var, value in (GRAFANA if variables is None else variables).items():
        out = out.replace(var, value)
    assert "$" not in out, f"a variable this test does not know: {out}"
    return out


def evaluate(host: str, expr: str) -> list[dict[str, Any]]:
    doc = http_json(host, f"/api/v1/query?{urllib.parse.urlencode({'query': expr})}")
    assert doc["status"] == "success", doc
    result: list[dict[str, Any]] = doc["data"]["result"]
    return result


def has_data(result: list[dict[str, Any]]) -> bool:
    return any(math.isfinite(float(series["value"][1])) for series in result)


def query_range(host: str, expr: str, since: float, step: float = 1) -> list[dict[str, Any]]:
    """A range query from `since` to now, as Grafana draws a panel: each series' values."""
    params = {
        "query": expr,
        "start": f"{since:.3f}",
        "end": f"{time.time():.3f}",
        "step": f"{step:g}",
    }
    doc = http_json(host, f"/api/v1/query_range?{urllib.parse.urlencode(params)}")
    assert doc["status"] == "success", doc
    result: list[dict[str, Any]] = doc["data"]["result"]
    return result


def default_interval() -> float:
    """The chart's scrape interval for the sidecars, which the operator's matches."""
    rendered = template(*MONITORING_ON)
    (pod_endpoint,) = rendered.one("PodMonitor")["spec"]["podMetricsEndpoints"]
    (svc_endpoint,) = rendered.one("ServiceMonitor")["spec"]["endpoints"]
    assert pod_endpoint["interval"] == svc_endpoint["interval"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())["monitoring"]
    assert values["podMonitor"]["interval"] == pod_endpoint["interval"]
    return seconds(pod_endpoint["interval"])


def seconds(duration: str) -> float:
    m = re.fullmatch(r"(\d+)([sm])", duration)
    assert m, duration
    return int(m[1]) * (60 if m[2] == "m" else 1)

"""Every PromQL expression of every dashboard panel returns data from a real Prometheus.

Real processes only: the operator (`trainop operator`) against the local control
plane running a TrainingJob through a worker failure, two metrics sidecars
(`python -m trainop.exporter`, one per worker pod of that job, with the exporter's
FakeNVML and a live progress.json), and Prometheus scraping all three on
127.0.0.1, with the chart's alert rules loaded. Grafana's variables are replaced
the way Grafana would, and each query must return at least one finite value: a
panel that could only ever be blank fails here.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.helpers import (
    Query,
    dashboard_queries,
    dashboards,
    panels,
    tool,
    write_rule_file,
)
from tests.chart.kube import WORKERS, phase, running_workers, training_job
from tests.cluster.conftest import Cluster, Operator, localcluster, wait_for
from tests.procs import stop_group
from trainop.exporter.fake_nvml import demo_gpus
from trainop_runtime import contract

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

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

    def run(self) -> None:
        started = time.time()
        step = 0
        while not self.stop.wait(0.5):
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
                    contract.P_RESTARTS: int(now - started > self.restarts_at),
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


def sidecar(stack: ExitStack, tmp: Path, ns: str, slot: int) -> int:
    """One worker pod's metrics sidecar, with that pod's identity and its own GPU."""
    run_dir = tmp / f"run-{slot}"
    run_dir.mkdir()
    (run_dir / contract.GPUS_FILE).write_text(json.dumps({"uuids": [demo_gpus(2)[slot].uuid]}))
    trainer = Trainer(run_dir, restarts_at=5.0)
    trainer.start()
    stack.callback(trainer.stop.set)
    port = localcluster.free_port()
    argv = [sys.executable, "-m", "trainop.exporter", "--address", "127.0.0.1"]
    argv += ["--port", str(port), "--run-dir", str(run_dir), "--fake-nvml-gpus", "2"]
    argv += ["--powercap-root", ""]
    env = {
        contract.ENV_JOB_NAME: JOB,
        contract.ENV_JOB_NAMESPACE: ns,
        contract.ENV_POD_NAME: f"{JOB}-worker-{slot}",
    }
    proc = stack.enter_context(process(argv, tmp / f"sidecar-{slot}.log", env))

    def serving() -> bool:
        assert proc.poll() is None, (tmp / f"sidecar-{slot}.log").read_text()
        try:
            return (
                "trainop_gpu_up"
                in urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
                .read()
                .decode()
            )
        except OSError:
            return False

    wait_for(f"sidecar {slot}", serving, timeout=30)
    return port


def prometheus(stack: ExitStack, tmp: Path, operator_port: int, sidecar_ports: list[int]) -> str:
    rules = write_rule_file(tmp / "rules.yaml")
    config = {
        "global": {"scrape_interval": SCRAPE, "evaluation_interval": SCRAPE},
        "rule_files": [str(rules)],
        "scrape_configs": [
            {
                "job_name": "trainop-operator",
                "static_configs": [{"targets": [f"127.0.0.1:{operator_port}"]}],
            },
            {
                "job_name": "trainop-workers",
                "static_configs": [{"targets": [f"127.0.0.1:{p}" for p in sidecar_ports]}],
            },
        ],
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


def grafana_expr(expr: str, ns: str) -> str:
    out = expr.replace("$namespace", ns).replace("$trainingjob", JOB)
    for var, value in GRAFANA.items():
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


def panel_peaks(host: str, title: str, ns: str, since: float) -> dict[str, float]:
    """Each target of the per-job panel `title`, as Grafana draws it (a range query
    at a 1 s step since `since`): its legend and the highest value it reached."""
    (panel,) = [p for p in panels(dashboards()["trainingjob"]) if p["title"] == title]
    peaks: dict[str, float] = {}
    for target in panel["targets"]:
        params = {
            "query": grafana_expr(target["expr"], ns),
            "start": f"{since:.3f}",
            "end": f"{time.time():.3f}",
            "step": "1",
        }
        doc = http_json(host, f"/api/v1/query_range?{urllib.parse.urlencode(params)}")
        assert doc["status"] == "success", doc
        values = [float(v) for s in doc["data"]["result"] for _, v in s["values"]]
        peaks[target["legendFormat"]] = max(values, default=math.nan)
    return peaks


def test_every_dashboard_query_returns_data(crd: Cluster, ns: str, tmp_path: Path) -> None:
    c = crd
    op = Operator(c, tmp_path / "operator.log")
    # Frequent resyncs keep the reconcile histogram moving within the short ranges.
    op.start(TRAINOP_RESYNC_SECONDS="2")
    with ExitStack() as stack:
        stack.callback(op.stop)
        c.apply(training_job(JOB), ns)
        pods = running_workers(c, ns, JOB, 2)
        phase(c, ns, JOB, "Running")
        ports = [sidecar(stack, tmp_path, ns, slot) for slot in (0, 1)]
        base = prometheus(stack, tmp_path, op.metrics_port, ports)
        # Prometheus must have seen the job before its failure, or nothing changes.
        wait_for(
            "Prometheus to scrape the job's restart count",
            lambda: evaluate(base, f'trainop_operator_job_restarts{{trainingjob="{JOB}"}} == 0'),
            timeout=30,
        )
        # A worker fails: the operator replaces it and counts the restart.
        c.kubectl(
            "annotate", "pod", pods[0]["metadata"]["name"], "-n", ns,
            "kwok.trainop.dev/exit-code=1",
        )  # fmt: skip
        failed_at = time.time()

        def counted() -> int | None:
            status = c.get("trainingjob", JOB, ns).get("status") or {}
            return int(status.get("restarts") or 0) or None

        restarts = wait_for("the failure counted in status", counted, timeout=60)
        running_workers(c, ns, JOB, 2)
        queries = dashboard_queries()

        def blank() -> list[Query]:
            return [q for q in queries if not has_data(evaluate(base, grafana_expr(q.expr, ns)))]

        # Ranges need samples: give every window time to fill, then demand data everywhere.
        time.sleep(30)
        deadline = time.monotonic() + 60
        missing = blank()
        while missing and time.monotonic() < deadline:
            time.sleep(3)
            missing = blank()
        assert not missing, "panels without data:\n" + "\n".join(
            f"  {q.where}: {grafana_expr(q.expr, ns)}" for q in missing
        )
        assert len(queries) >= 40

        # The restart timeline shows the injected failure: the restarts the API server
        # counted, the job's budget, and a bar after the moment the worker failed.
        peaks = panel_peaks(
            base, "Restart timeline: workers replaced by the operator", ns, failed_at - 5
        )
        spec = c.get("trainingjob", JOB, ns)["spec"]
        assert peaks == {
            "restarts used": restarts,
            "restart budget": spec["failurePolicy"]["backoffLimit"],
            "restarts in interval": pytest.approx(restarts, abs=0.5),
        }

        # The same Prometheus loaded the chart's alert rules and evaluates them cleanly.
        groups = http_json(base, "/api/v1/rules")["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        assert len(rules) == 6
        assert [r["name"] for r in rules if r["health"] != "ok"] == []

        # The targets' own labels are all the dashboards needed: nothing else was set.
        pods_seen = {
            s["metric"]["trainingjob_pod"]
            for s in evaluate(base, f'trainop_training_up{{trainingjob="{JOB}"}}')
        }
        assert pods_seen == {f"{JOB}-worker-0", f"{JOB}-worker-1"}
    assert c.list("pods", ns, WORKERS.format(name=JOB))

"""Real Prometheus tools against the real exporter process.

Needs the Debian package `prometheus` (prometheus and promtool on PATH, which
hack/setup.sh installs); without them these tests fail, saying how to install them.
"""

from __future__ import annotations

import json
import subprocess
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.exporter.helpers import (
    ExporterProcess,
    exporter_process,
    fake_powercap,
    free_port,
    http_get,
    required_tool,
    wait_until,
    write_gpus_file,
    write_progress,
)
from trainop.exporter import names as n
from trainop.exporter.fake_nvml import demo_gpus

# Two of the fake node's four GPUs belong to this pod.
POD_GPUS = [demo_gpus(4)[1].uuid, demo_gpus(4)[3].uuid]


@pytest.fixture
def exporter(tmp_path: Path) -> Iterator[ExporterProcess]:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_progress(run_dir, time=None)
    write_gpus_file(run_dir, POD_GPUS)
    powercap = fake_powercap(tmp_path / "powercap", {"intel-rapl:0": ("package-0", 5, 10**9)})
    # GPUs read every 0.2 s: Prometheus here scrapes every second, and each scrape
    # serves the last sample.
    with exporter_process(
        run_dir,
        "--fake-nvml-gpus",
        "4",
        "--powercap-root",
        str(powercap),
        "--sample-every",
        "0.2",
    ) as proc:
        yield proc


def test_promtool_accepts_the_exposition(exporter: ExporterProcess) -> None:
    # Profiling needs two of the sampler's passes: wait for them, so that the lint
    # sees every family, GPM ones included.
    def profiled() -> str | None:
        text = exporter.scrape().text
        return text if n.GPU_TENSOR_ACTIVE in text else None

    body = wait_until(profiled, timeout=10, what="GPM profiling series from the sampler thread")
    assert n.GPU_ENERGY in body
    assert n.CPU_ENERGY in body
    assert n.GPU_NVLINK_RECEIVE in body
    result = subprocess.run(
        [required_tool("promtool"), "check", "metrics"],
        input=body,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "", result.stdout


def _query(base: str, promql: str) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    status, body = http_get(url)
    doc = json.loads(body)
    assert status == 200
    assert doc["status"] == "success", doc
    result: list[dict[str, Any]] = doc["data"]["result"]
    return result


def test_prometheus_scrapes_and_promql_returns_the_series(
    exporter: ExporterProcess, tmp_path: Path
) -> None:
    port = free_port()
    config = tmp_path / "prometheus.yml"
    # A static target with the labels a PodMonitor would attach, to prove that
    # none of ours collide with them (no exported_pod, exported_job...).
    config.write_text(
        json.dumps(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [
                    {
                        "job_name": "trainop-exporter",
                        "static_configs": [
                            {
                                "targets": [f"127.0.0.1:{exporter.port}"],
                                "labels": {"pod": "llama-worker-0", "namespace": "team-a"},
                            }
                        ],
                    }
                ],
            }
        )
    )
    prometheus = required_tool("prometheus")
    log = (tmp_path / "prometheus.log").open("wb")
    server = subprocess.Popen(
        [
            prometheus,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_get(f"{base}/-/ready")[0] == 200, 60, "prometheus to be ready")
        power = wait_until(
            lambda: len(r := _query(base, n.GPU_POWER)) == 2 and r,
            60,
            "prometheus to scrape both GPUs",
        )
        by_uuid = {s["metric"][n.L_GPU_UUID]: s for s in power}
        assert set(by_uuid) == set(POD_GPUS)
        labels = by_uuid[POD_GPUS[0]]["metric"]
        assert labels["job"] == "trainop-exporter"
        assert labels["pod"] == "llama-worker-0"
        assert labels["trainingjob"] == "llama"
        assert labels["trainingjob_namespace"] == "team-a"
        assert labels[n.L_MODEL] == "NVIDIA H100 80GB HBM3"
        assert not [k for k in labels if k.startswith("exported_")]
        assert float(by_uuid[POD_GPUS[0]]["value"][1]) == 551.0

        up = _query(base, 'up{job="trainop-exporter"}')
        assert [float(s["value"][1]) for s in up] == [1.0]
        step = _query(base, f'{n.TRAINING_STEP}{{trainingjob="llama"}}')
        assert [float(s["value"][1]) for s in step] == [120.0]

        # Energy is a real counter: its per-second increase is the power draw. Each
        # scrape serves a sample up to 0.2 s old, so the rate is taken over a full 10 s
        # window of them (rate() over a window the series only partly fills reads low).
        wait_until(
            lambda: _query(base, f"min(count_over_time({n.GPU_ENERGY}[10s])) >= 10"),
            60,
            "a full 10 s window of energy samples",
        )
        watts = _query(base, f"sum(rate({n.GPU_ENERGY}[10s]))")
        assert float(watts[0]["value"][1]) == pytest.approx(551.0 + 553.0, rel=0.1)
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def test_a_missing_prometheus_binary_fails_saying_how_to_install_it() -> None:
    with pytest.raises(pytest.fail.Exception, match=r"not installed: run hack/setup\.sh"):
        required_tool("prometheus-that-is-not-installed")

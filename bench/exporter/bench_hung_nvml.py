"""Scrape latency while an NVML call hangs (issue 15: "a hung NVML call blocks every scrape").

Runs the exporter in this process (RunningExporter, the same HTTP server and
collector as the sidecar) over FakeNVML with 8 simulated GPUs, with the
default sample interval and NVML timeout. Then GPU 3's calls are made to hang
(FakeNVML.hang: a fake, no GPU here) and three clients scrape /metrics at once,
back to back, as the issue's three concurrent Prometheus requests did:

- "healthy": no GPU hangs;
- "hang, being detected": from the moment GPU 3 hangs, while the sampler still
  waits out its read timeout;
- "hang, detected": after GPU 3 is reported down.

Client and server share one interpreter, so the figures include the clients'
own share of the GIL: they are an upper bound on what Prometheus would see.

    nice -n 15 .venv/bin/python bench/exporter/bench_hung_nvml.py \
        --out bench/exporter/hung_nvml.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from trainop.exporter import names as n
from trainop.exporter.app import ExporterConfig, RunningExporter
from trainop.exporter.collector import TrainopCollector
from trainop.exporter.fake_nvml import FakeNVML, demo
from trainop.exporter.gpu import GpuReader
from trainop.exporter.nvml import Nvml
from trainop.exporter.rapl import RaplReader

TARGET_MS = 50.0
CLIENTS = 3
HUNG_GPU = 3


def scrape_ms(url: str) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as resp:  # noqa: S310  # 127.0.0.1
        resp.read()
    return (time.perf_counter() - started) * 1000


def run(url: str, *, scrapes: int = 0, seconds: float = 0.0) -> list[float]:
    """CLIENTS clients scraping back to back, for `scrapes` each or for `seconds`."""

    def client(_: int) -> list[float]:
        out: list[float] = []
        deadline = time.monotonic() + seconds
        while (len(out) < scrapes) if scrapes else (time.monotonic() < deadline):
            out.append(scrape_ms(url))
        return out

    with ThreadPoolExecutor(CLIENTS) as pool:
        return [ms for part in pool.map(client, range(CLIENTS)) for ms in part]


def summary(name: str, ms: list[float]) -> dict[str, object]:
    q = statistics.quantiles(ms, n=100)
    return {
        "scenario": name,
        "scrapes": len(ms),
        "p50_ms": round(statistics.median(ms), 2),
        "p99_ms": round(q[98], 2),
        "max_ms": round(max(ms), 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--scrapes", type=int, default=200, help="per client, per scenario")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp)
        (run_dir / "progress.json").write_text(json.dumps({"step": 1, "time": time.time()}))
        config = ExporterConfig(address="127.0.0.1", port=0, run_dir=run_dir, all_gpus=True)
        fake: FakeNVML = demo(8)
        collector = TrainopCollector(
            run_dir=run_dir,
            gpu_reader=GpuReader(
                lambda: Nvml(fake),
                monotonic=time.monotonic,
                read_timeout_seconds=config.nvml_timeout_seconds,
            ),
            rapl_reader=RaplReader(None),
            identity={n.L_TRAININGJOB: "bench"},
            all_gpus=True,
            gpu_sample_stale_after_seconds=config.gpu_sample_stale_after_seconds,
        )
        exporter = RunningExporter(config, collector)
        url = f"http://127.0.0.1:{exporter.port}/metrics"
        hung = fake.gpus[HUNG_GPU].uuid
        try:
            results = [summary("healthy", run(url, scrapes=args.scrapes))]
            fake.hang(hung)
            detecting = run(url, seconds=config.nvml_timeout_seconds)
            results.append(summary("hang, being detected", detecting))
            down_line = ""
            while not down_line.endswith(" 0.0"):
                time.sleep(0.2)
                with urllib.request.urlopen(url) as resp:  # 127.0.0.1
                    lines = resp.read().decode().splitlines()
                down_line = next(
                    line for line in lines if line.startswith(n.GPU_DEVICE_UP) and hung in line
                )
            results.append(summary("hang, detected", run(url, scrapes=args.scrapes)))
        finally:
            fake.release(hung)
            exporter.stop()
    report = {
        "command": " ".join(["nice -n 15 .venv/bin/python", *sys.argv]),
        "machine": (
            f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
        ),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "nvml": "FakeNVML (a fake), 8 GPUs, GPU 3 hung",
        "clients": CLIENTS,
        "sample_seconds": config.sample_seconds,
        "nvml_timeout_seconds": config.nvml_timeout_seconds,
        "hung_gpu_line": down_line,
        "results": results,
        "target_max_ms": TARGET_MS,
        "max_under_target": all(float(str(r["max_ms"])) < TARGET_MS for r in results),
    }
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

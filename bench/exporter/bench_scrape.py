"""Exporter overhead: scrape latency (p50/p99) and CPU per scrape at 1 s and 15 s intervals.

Runs the real ``python -m trainop.exporter`` process with FakeNVML GPUs (no
GPU on the benchmark machine: NVML's own call latency is not in these
figures), a fresh progress.json and gpus.json, and scrapes it over HTTP like
Prometheus does. CPU is the exporter process's utime+stime from /proc, so it
includes the HTTP server, the collector and the Python runtime.

    nice -n 15 .venv/bin/python bench/exporter/bench_scrape.py --out bench/exporter/results.json

On a GPU machine, ``--real-nvml`` reads the real NVML instead, with
``--all-gpus`` (every GPU of the machine; ``--gpus`` is then ignored). It
stops, with the exporter's log, if the exporter cannot read a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

CLK_TCK = os.sysconf("SC_CLK_TCK")
TARGET_LATENCY_S = 0.020
TARGET_CORE_FRACTION_AT_15S = 0.01


@dataclass
class Result:
    scenario: str
    interval_s: float
    scrapes: int
    wall_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    cpu_s: float
    cpu_ms_per_scrape: float
    core_percent: float
    body_bytes: int


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / CLK_TCK


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def scrape(url: str) -> tuple[float, int]:
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310  # 127.0.0.1 only
        body = resp.read()
    return time.perf_counter() - start, len(body)


def summarise(
    name: str, interval: float, latencies: list[float], size: int, wall: float, cpu: float
) -> Result:
    return Result(
        scenario=name,
        interval_s=interval,
        scrapes=len(latencies),
        wall_s=round(wall, 2),
        p50_ms=round(statistics.median(latencies) * 1000, 2),
        p99_ms=round(percentile(latencies, 0.99) * 1000, 2),
        max_ms=round(max(latencies) * 1000, 2),
        cpu_s=round(cpu, 3),
        cpu_ms_per_scrape=round(cpu / len(latencies) * 1000, 2),
        core_percent=round(cpu / wall * 100, 3),
        body_bytes=size,
    )


def run_scenario(name: str, url: str, pid: int, interval: float, duration: float) -> Result:
    latencies: list[float] = []
    size = 0
    cpu0 = cpu_seconds(pid)
    t0 = time.monotonic()
    next_at = t0
    while True:
        now = time.monotonic()
        if now - t0 >= duration and latencies:
            break
        if now < next_at:
            time.sleep(next_at - now)
        latency, size = scrape(url)
        latencies.append(latency)
        next_at += interval
    # Measure over whole intervals, so idle time between scrapes counts too.
    end = t0 + len(latencies) * interval if interval else time.monotonic()
    time.sleep(max(0.0, end - time.monotonic()))
    wall = time.monotonic() - t0
    return summarise(name, interval, latencies, size, wall, cpu_seconds(pid) - cpu0)


def start_exporter(
    run_dir: Path, gpus: int, port: int, *, real_nvml: bool
) -> subprocess.Popen[bytes]:
    progress = {"step": 1200, "totalSteps": 10000, "samples": 38400, "loss": 2.1}
    progress |= {"stepSeconds": 0.4, "restarts": 0, "worldSize": 8, "time": time.time() + 3600}
    (run_dir / "progress.json").write_text(json.dumps(progress))
    argv = [sys.executable, "-m", "trainop.exporter", "--address", "127.0.0.1"]
    argv += ["--port", str(port), "--run-dir", str(run_dir)]
    if real_nvml:
        argv.append("--all-gpus")
    else:
        uuids = [f"GPU-fa4e0000-0000-4000-8000-{i:012d}" for i in range(gpus)]
        (run_dir / "gpus.json").write_text(json.dumps({"uuids": uuids}))
        argv += ["--fake-nvml-gpus", str(gpus)]
    env = {**os.environ, "TRAINOP_JOB_NAME": "bench", "TRAINOP_JOB_NAMESPACE": "bench"}
    env["TRAINOP_POD_NAME"] = "bench-worker-0"
    with (run_dir / "exporter.log").open("wb") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            scrape(f"http://127.0.0.1:{port}/healthz")
        except OSError:
            time.sleep(0.1)
        else:
            return proc
    proc.kill()
    raise SystemExit(f"exporter did not start:\n{exporter_log(run_dir)}")


def exporter_log(run_dir: Path) -> str:
    return (run_dir / "exporter.log").read_text(errors="replace")[-4000:]


def gpus_read(url: str) -> tuple[float, int]:
    """trainop_gpu_up and trainop_gpu_devices on one scrape."""
    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310  # 127.0.0.1 only
        body = resp.read().decode()
    values = {
        s.name: s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
        if s.name in ("trainop_gpu_up", "trainop_gpu_devices")
    }
    return values.get("trainop_gpu_up", 0.0), int(values.get("trainop_gpu_devices", 0))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--duration-1s", type=float, default=120.0)
    parser.add_argument("--duration-15s", type=float, default=300.0)
    parser.add_argument("--burst", type=int, default=500, help="back-to-back scrapes")
    parser.add_argument("--idle", type=float, default=60.0, help="seconds with no scrape")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--real-nvml",
        action="store_true",
        help="read this machine's GPUs through the real NVML (all of them), not FakeNVML",
    )
    args = parser.parse_args()

    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        proc = start_exporter(Path(tmp), args.gpus, port, real_nvml=args.real_nvml)
        url = f"http://127.0.0.1:{port}/metrics"
        try:
            for _ in range(20):  # warm-up: imports, first NVML init, allocator
                scrape(url)
            gpu_up, gpus = gpus_read(url)
            if gpu_up != 1.0 or gpus == 0:
                # Timing a scrape that reads no GPU would pass off the floor as NVML's cost.
                raise SystemExit(
                    f"the exporter reads no GPU (trainop_gpu_up {gpu_up}, {gpus} devices); "
                    f"its log:\n{exporter_log(Path(tmp))}"
                )
            health = f"http://127.0.0.1:{port}/healthz"
            results = [
                # The floor: an HTTP round trip that reads nothing, on the same
                # machine at the same moment. Its tail is the machine's, not ours.
                burst(health, proc.pid, args.burst, "healthz back-to-back (floor)"),
                burst(url, proc.pid, args.burst),
                run_scenario("metrics every 1 s", url, proc.pid, 1.0, args.duration_1s),
                run_scenario("metrics every 15 s", url, proc.pid, 15.0, args.duration_15s),
            ]
            cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
            time.sleep(args.idle)
            idle_percent = (cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - t0) * 100
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=10)

    at_15 = next(r for r in results if r.interval_s == 15.0)
    worst_p99 = max(r.p99_ms for r in results if r.interval_s)
    floor = results[0]
    report = {
        "command": " ".join(["nice -n 15 .venv/bin/python", *sys.argv]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}",
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "nvml": "real" if args.real_nvml else "FakeNVML",
        "gpus": gpus,
        "results": [asdict(r) for r in results],
        "idle_core_percent": round(idle_percent, 3),
        "healthz_floor_p99_ms": floor.p99_ms,
        "targets": {
            "p99_under_20ms": worst_p99 < TARGET_LATENCY_S * 1000,
            "under_1_percent_core_at_15s": at_15.core_percent < TARGET_CORE_FRACTION_AT_15S * 100,
        },
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


def burst(url: str, pid: int, count: int, name: str = "metrics back-to-back") -> Result:
    """Back-to-back scrapes: enough samples for a meaningful p99."""
    latencies: list[float] = []
    size = 0
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    for _ in range(count):
        latency, size = scrape(url)
        latencies.append(latency)
    wall = time.monotonic() - t0
    return summarise(name, 0.0, latencies, size, wall, cpu_seconds(pid) - cpu0)


if __name__ == "__main__":
    sys.exit(main())

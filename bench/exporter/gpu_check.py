"""On a machine WITH an NVIDIA GPU: check the exporter against nvidia-smi under load.

Starts a torch matmul load on every GPU, runs ``python -m trainop.exporter
--all-gpus``, and for ``--seconds`` compares, per GPU, the exporter's power
and the average power implied by its energy counter with ``nvidia-smi``'s
``power.draw``. Writes the report and the last exposition, which can be
committed as ``tests/exporter/fixtures/<name>.prom`` for the replay tests.

    .venv/bin/python bench/exporter/gpu_check.py --out /tmp/gpu-check

Not run by CI (no GPU there). Exits 2 when no GPU is visible.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

LOAD = """
import sys, time, torch
end = time.time() + float(sys.argv[1])
xs = [torch.randn(8192, 8192, device=f"cuda:{i}", dtype=torch.bfloat16)
      for i in range(torch.cuda.device_count())]
while time.time() < end:
    for x in xs:
        x @ x
    torch.cuda.synchronize()
"""


def nvidia_smi() -> dict[str, dict[str, float]]:
    out = subprocess.run(
        [
            "nvidia-smi",
            "--query-gpu=uuid,power.draw,enforced.power.limit,temperature.gpu,clocks.sm,"
            "utilization.gpu,memory.used",
            "--format=csv,noheader,nounits",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows: dict[str, dict[str, float]] = {}
    for line in out.strip().splitlines():
        uuid, power, limit, temp, clock, util, mem_mib = (f.strip() for f in line.split(","))
        rows[uuid] = {
            "power_watts": float(power),
            "power_limit_watts": float(limit),
            "temperature_celsius": float(temp),
            "sm_clock_hertz": float(clock) * 1e6,
            "utilization_ratio": float(util) / 100,
            "memory_used_bytes": float(mem_mib) * 1024**2,
        }
    return rows


def exporter_values(text: str) -> dict[str, dict[str, float]]:
    wanted = {
        "trainop_gpu_power_watts": "power_watts",
        "trainop_gpu_energy_joules_total": "energy_joules",
        "trainop_gpu_power_limit_watts": "power_limit_watts",
        "trainop_gpu_temperature_celsius": "temperature_celsius",
        "trainop_gpu_sm_clock_hertz": "sm_clock_hertz",
        "trainop_gpu_utilization_ratio": "utilization_ratio",
        "trainop_gpu_memory_used_bytes": "memory_used_bytes",
    }
    rows: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in wanted:
                rows.setdefault(s.labels["gpu_uuid"], {})[wanted[s.name]] = s.value
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--port", type=int, default=19400)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if shutil.which("nvidia-smi") is None:
        print("no nvidia-smi: this check needs a machine with an NVIDIA GPU")
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp())
    load = subprocess.Popen([sys.executable, "-c", LOAD, str(args.seconds + 30)])
    exporter = subprocess.Popen(
        [
            *(sys.executable, "-m", "trainop.exporter", "--all-gpus", "--address", "127.0.0.1"),
            *("--port", str(args.port), "--run-dir", str(run_dir)),
        ],
        stderr=(args.out / "exporter.log").open("wb"),
    )
    url = f"http://127.0.0.1:{args.port}/metrics"
    samples: list[tuple[float, dict[str, dict[str, float]], dict[str, dict[str, float]]]] = []
    text = ""
    try:
        time.sleep(15)  # let the load ramp up clocks and power
        end = time.monotonic() + args.seconds
        while time.monotonic() < end:
            with urllib.request.urlopen(url, timeout=5) as resp:
                text = resp.read().decode()
            samples.append((time.monotonic(), exporter_values(text), nvidia_smi()))
            time.sleep(1)
    finally:
        exporter.send_signal(signal.SIGTERM)
        exporter.wait(timeout=10)
        load.kill()
    (args.out / "exposition.prom").write_text(text)
    report: dict[str, object] = {}
    (t0, first, _), (t1, last, _) = samples[0], samples[-1]
    for uuid in last:
        ours = [s[1][uuid]["power_watts"] for s in samples]
        smi = [s[2][uuid]["power_watts"] for s in samples if uuid in s[2]]
        energy_watts = (last[uuid]["energy_joules"] - first[uuid]["energy_joules"]) / (t1 - t0)
        report[uuid] = {
            "exporter_power_mean_w": round(statistics.mean(ours), 1),
            "nvidia_smi_power_mean_w": round(statistics.mean(smi), 1),
            "energy_counter_mean_w": round(energy_watts, 1),
            "last_exporter": last[uuid],
            "last_nvidia_smi": samples[-1][2].get(uuid),
        }
    text_report = json.dumps(report, indent=2)
    (args.out / "report.json").write_text(text_report + "\n")
    print(text_report)
    return 0


if __name__ == "__main__":
    sys.exit(main())

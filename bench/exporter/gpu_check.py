"""On a machine WITH an NVIDIA GPU: record a real exposition and check it against nvidia-smi.

One command; everything it writes goes under ``--out``:

    .venv/bin/python bench/exporter/gpu_check.py --out /tmp/gpu-check

A load process stands in for the trainer container: bf16 matmuls on every
visible GPU, ``gpus.json`` written by ``trainop_runtime.gpus`` and
``progress.json`` by ``trainop_runtime.progress.ProgressReporter``, the same
code a trainer in a pod runs. The exporter is the real ``python -m
trainop.exporter`` reading that run dir as the sidecar does (no
``--all-gpus``: it selects the GPUs by UUID). After a warm-up it scrapes
``/metrics`` once a second for ``--seconds``, querying ``nvidia-smi`` right
after each scrape.

Checks (per GPU unless said otherwise), each with its tolerance in report.json:

- power: mean exporter power within max(5 %, 10 W) of mean nvidia-smi
  ``power.draw`` (the same sensor read tens of ms apart);
- energy: the energy counter's increase over the window divided by its
  length within max(10 %, 15 W) of mean nvidia-smi ``power.draw`` (a sampled
  mean against an integral, so a looser bound);
- every GPU nvidia-smi lists is exported; ``trainop_gpu_up`` and
  ``trainop_training_up`` are 1 on every scrape; no scrape failed.

Files under ``--out``: ``report.json`` (figures and a verdict per check),
``<model>_under_load.prom`` (the last exposition, headed ``# REAL GPU
recording: ...``, ready to copy into ``tests/exporter/fixtures/`` where
``test_replay.py`` replays it), ``exporter.log``, ``load.log``,
``nvidia-smi-q.txt`` and the ``run/`` dir.

Exit status: 0 every check passed, 1 a check failed, 2 it could not run (no
nvidia-smi or GPU, torch without CUDA, the load or the exporter did not start).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

EXIT_PASS, EXIT_MISMATCH, EXIT_CANNOT_RUN = 0, 1, 2

# (relative, absolute watts): a reading passes within the larger of the two.
POWER_TOLERANCE = (0.05, 10.0)
ENERGY_TOLERANCE = (0.10, 15.0)
HEADER_PREFIX = "# REAL GPU recording:"

# The trainer's side, run as its own process so CUDA never enters the exporter's.
LOAD = """
import os, sys, time
from pathlib import Path

import torch

from trainop_runtime import contract
from trainop_runtime.gpus import write_gpus_file
from trainop_runtime.progress import ProgressReporter

run_dir, seconds = Path(sys.argv[1]), float(sys.argv[2])
if not torch.cuda.is_available():
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda}) cannot use a GPU here: "
          "install a torch build for this driver's CUDA version", flush=True)
    sys.exit(3)
uuids = write_gpus_file(run_dir, os.environ)
print(f"gpus.json: {uuids}", flush=True)
reporter = ProgressReporter(run_dir / contract.PROGRESS_FILE, enabled=True,
                            total_steps=None, restarts=0)
xs = [torch.randn(8192, 8192, device=f"cuda:{i}", dtype=torch.bfloat16)
      for i in range(torch.cuda.device_count())]
step, end = 0, time.time() + seconds
while time.time() < end:
    started = time.perf_counter()
    for _ in range(4):
        for x in xs:
            x @ x
    torch.cuda.synchronize()
    step += 1
    reporter.report(step=step, samples=step * 4 * len(xs), loss=None,
                    step_seconds=time.perf_counter() - started, world_size=1,
                    checkpoint_step=None, checkpoint_time=None)
"""

SMI_FIELDS = ("uuid", "name", "driver_version", "power.draw", "enforced.power.limit")
EXPORTER_FIELDS = {
    "trainop_gpu_power_watts": "power_watts",
    "trainop_gpu_energy_joules_total": "energy_joules",
    "trainop_gpu_power_limit_watts": "power_limit_watts",
    "trainop_gpu_temperature_celsius": "temperature_celsius",
    "trainop_gpu_sm_clock_hertz": "sm_clock_hertz",
    "trainop_gpu_utilization_ratio": "utilization_ratio",
    "trainop_gpu_memory_used_bytes": "memory_used_bytes",
}


class CannotRunError(Exception):
    """This machine cannot run the check; the message says why."""


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:  # "[N/A]", "[Not Supported]"
        return None


def parse_smi(csv: str) -> dict[str, dict[str, str | float | None]]:
    """``nvidia-smi --query-gpu=<SMI_FIELDS> --format=csv,noheader,nounits`` by UUID."""
    rows: dict[str, dict[str, str | float | None]] = {}
    for line in csv.strip().splitlines():
        uuid, name, driver, power, limit = (f.strip() for f in line.split(","))
        rows[uuid] = {
            "name": name,
            "driver_version": driver,
            "power_watts": _number(power),
            "power_limit_watts": _number(limit),
        }
    return rows


def nvidia_smi() -> dict[str, dict[str, str | float | None]]:
    query = f"--query-gpu={','.join(SMI_FIELDS)}"
    out = subprocess.run(
        ["nvidia-smi", query, "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    return parse_smi(out)


def exporter_values(text: str) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Per-GPU readings by UUID, and the unlabelled gauges (up, training_up...)."""
    per_gpu: dict[str, dict[str, float]] = {}
    plain: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in EXPORTER_FIELDS:
                per_gpu.setdefault(s.labels["gpu_uuid"], {})[EXPORTER_FIELDS[s.name]] = s.value
            elif "gpu_uuid" not in s.labels:
                plain.setdefault(s.name, s.value)
    return per_gpu, plain


@dataclass
class Sample:
    at: float  # monotonic seconds, right after the scrape returned
    exporter: dict[str, dict[str, float]]
    plain: dict[str, float]
    smi: Mapping[str, Mapping[str, str | float | None]]


@dataclass
class Check:
    name: str
    passed: bool
    detail: str
    figures: dict[str, object] = field(default_factory=dict)


def within(ours: float, reference: float, tolerance: tuple[float, float]) -> tuple[bool, float]:
    """Whether ``ours`` is within tolerance of ``reference``, and the allowed gap in watts."""
    relative, absolute = tolerance
    allowed = max(relative * abs(reference), absolute)
    return abs(ours - reference) <= allowed, allowed


def assess(samples: Sequence[Sample], failed_scrapes: int) -> list[Check]:
    """Every check on the recorded samples. Purely computational."""
    checks = [
        Check("no failed scrape", failed_scrapes == 0, f"{failed_scrapes} scrape(s) failed"),
    ]
    if len(samples) < 2:
        checks.append(Check("enough samples", False, f"{len(samples)} sample(s), need 2"))
        return checks
    for gauge in ("trainop_gpu_up", "trainop_training_up"):
        bad = sum(1 for s in samples if s.plain.get(gauge) != 1.0)
        checks.append(Check(f"{gauge} is 1", bad == 0, f"not 1 on {bad} of {len(samples)}"))
    smi_uuids = set(samples[-1].smi)
    exported = set(samples[-1].exporter)
    checks.append(
        Check(
            "every GPU exported",
            smi_uuids == exported,
            f"nvidia-smi lists {sorted(smi_uuids)}, exporter exports {sorted(exported)}",
        )
    )
    first, last = samples[0], samples[-1]
    for uuid in sorted(smi_uuids & exported):
        ours = [s.exporter[uuid]["power_watts"] for s in samples if uuid in s.exporter]
        smi = [p for s in samples if isinstance(p := s.smi.get(uuid, {}).get("power_watts"), float)]
        if not ours or not smi:
            checks.append(Check(f"{uuid} power", False, "no power readings to compare"))
            continue
        smi_mean = statistics.mean(smi)
        ok, allowed = within(statistics.mean(ours), smi_mean, POWER_TOLERANCE)
        checks.append(
            Check(
                f"{uuid} power",
                ok,
                f"exporter {statistics.mean(ours):.1f} W vs nvidia-smi {smi_mean:.1f} W "
                f"(allowed +-{allowed:.1f} W)",
                {"exporter_mean_w": statistics.mean(ours), "nvidia_smi_mean_w": smi_mean},
            )
        )
        e0 = first.exporter.get(uuid, {}).get("energy_joules")
        e1 = last.exporter.get(uuid, {}).get("energy_joules")
        if e0 is None or e1 is None:
            checks.append(Check(f"{uuid} energy", False, "no energy counter exported"))
            continue
        energy_watts = (e1 - e0) / (last.at - first.at)
        ok, allowed = within(energy_watts, smi_mean, ENERGY_TOLERANCE)
        checks.append(
            Check(
                f"{uuid} energy",
                ok,
                f"energy counter {energy_watts:.1f} W over {last.at - first.at:.0f} s vs "
                f"nvidia-smi {smi_mean:.1f} W (allowed +-{allowed:.1f} W)",
                {"energy_counter_mean_w": energy_watts, "nvidia_smi_mean_w": smi_mean},
            )
        )
    return checks


def header(smi: Mapping[str, Mapping[str, str | float | None]], when: datetime.datetime) -> str:
    models = sorted({str(row["name"]) for row in smi.values()})
    drivers = sorted({str(row["driver_version"]) for row in smi.values()})
    return (
        f"{HEADER_PREFIX} {len(smi)} x {', '.join(models)}, driver {', '.join(drivers)}, "
        f"{when.strftime('%Y-%m-%dT%H:%M:%SZ')}, under a bf16 matmul load\n"
        "# Recorded by bench/exporter/gpu_check.py; replayed by tests/exporter/test_replay.py\n"
    )


def fixture_name(smi: Mapping[str, Mapping[str, str | float | None]]) -> str:
    model = str(next(iter(smi.values()))["name"]) if smi else "gpu"
    return re.sub(r"[^a-z0-9]+", "_", model.lower()).strip("_") + "_under_load.prom"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


Procs = Mapping[str, tuple[subprocess.Popen[bytes], Path]]


def _check_alive(procs: Procs) -> None:
    for name, (proc, log) in procs.items():
        if proc.poll() is not None:
            raise CannotRunError(f"the {name} exited ({proc.returncode}):\n{_tail(log)}")


def _wait_for(what: str, ready: Callable[[], bool], procs: Procs, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _check_alive(procs)
        if ready():
            return
        time.sleep(0.5)
    raise CannotRunError(f"timed out after {timeout:.0f} s waiting for {what}")


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310  # 127.0.0.1 only
            return bool(resp.status == 200)
    except OSError:
        return False


def _probe_gpus(out: Path) -> dict[str, dict[str, str | float | None]]:
    if shutil.which("nvidia-smi") is None:
        raise CannotRunError("no nvidia-smi on PATH: this check needs a machine with an NVIDIA GPU")
    try:
        smi = nvidia_smi()
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
        raise CannotRunError(f"nvidia-smi failed: {err}") from err
    if not smi:
        raise CannotRunError("nvidia-smi lists no GPU")
    (out / "nvidia-smi-q.txt").write_text(
        subprocess.run(["nvidia-smi", "-q"], capture_output=True, text=True, check=False).stdout
    )
    return smi


def _start(out: Path, run_dir: Path, port: int, duration: float) -> Procs:
    env = {
        **os.environ,
        "TRAINOP_JOB_NAME": "gpu-check",
        "TRAINOP_JOB_NAMESPACE": "bench",
        "TRAINOP_POD_NAME": "gpu-check-worker-0",
        # As the downward API would: the recording then shows the GPU series' node label.
        "TRAINOP_NODE_NAME": socket.gethostname(),
    }
    load_log, exporter_log = out / "load.log", out / "exporter.log"
    with load_log.open("wb") as log:
        load = subprocess.Popen(
            [sys.executable, "-c", LOAD, str(run_dir), str(duration)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    with exporter_log.open("wb") as log:
        exporter = subprocess.Popen(
            [
                *(sys.executable, "-m", "trainop.exporter", "--address", "127.0.0.1"),
                *("--port", str(port), "--run-dir", str(run_dir)),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    return {"load": (load, load_log), "exporter": (exporter, exporter_log)}


def _sample(url: str, seconds: float, procs: Procs) -> tuple[list[Sample], int, str]:
    """Scrape once a second: the samples, how many scrapes failed, the last exposition."""
    samples: list[Sample] = []
    failed = 0
    text = ""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        _check_alive(procs)
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310  # 127.0.0.1 only
                text = resp.read().decode()
            at = time.monotonic()
            per_gpu, plain = exporter_values(text)
            samples.append(Sample(at, per_gpu, plain, nvidia_smi()))
        except (OSError, subprocess.SubprocessError) as err:
            failed += 1
            print(f"scrape failed: {err}")
        time.sleep(1)
    return samples, failed, text


def record(args: argparse.Namespace) -> int:
    out: Path = args.out
    smi = _probe_gpus(out)
    run_dir = out / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    port = args.port or _free_port()
    # The load outlives the window; it is stopped right after it.
    procs = _start(out, run_dir, port, args.warmup + args.seconds + 120)
    try:
        _wait_for(
            "the exporter to listen",
            lambda: _healthy(f"http://127.0.0.1:{port}/healthz"),
            procs,
            60,
        )
        _wait_for(
            "the load to write progress.json (CUDA start-up)",
            (run_dir / "progress.json").exists,
            procs,
            180,
        )
        print(f"load running; warming up {args.warmup:.0f} s, then {args.seconds:.0f} s of samples")
        time.sleep(args.warmup)  # clocks and power ramp up
        samples, failed, text = _sample(f"http://127.0.0.1:{port}/metrics", args.seconds, procs)
    finally:
        for proc, _log in procs.values():
            _stop(proc)

    when = datetime.datetime.now(datetime.UTC)
    fixture = out / fixture_name(smi)
    if text:
        fixture.write_text(header(smi, when) + text)
    checks = assess(samples, failed)
    passed = all(c.passed for c in checks)
    report = {
        "passed": passed,
        "recorded_at": when.isoformat(),
        "gpus": smi,
        "samples": len(samples),
        "window_seconds": round(samples[-1].at - samples[0].at, 2) if samples else 0,
        "tolerances": {
            "power": {"relative": POWER_TOLERANCE[0], "watts": POWER_TOLERANCE[1]},
            "energy": {"relative": ENERGY_TOLERANCE[0], "watts": ENERGY_TOLERANCE[1]},
        },
        "checks": [c.__dict__ for c in checks],
        "fixture": str(fixture) if text else None,
        "last_exporter": samples[-1].exporter if samples else None,
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    for c in checks:
        print(f"{'PASS' if c.passed else 'FAIL'}  {c.name}: {c.detail}")
    print(f"{'PASSED' if passed else 'FAILED'}; report {out / 'report.json'}, fixture {fixture}")
    return EXIT_PASS if passed else EXIT_MISMATCH


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="where every file goes")
    parser.add_argument("--seconds", type=float, default=60.0, help="sampling window")
    parser.add_argument("--warmup", type=float, default=15.0, help="load before sampling")
    parser.add_argument("--port", type=int, default=0, help="exporter port (default: a free one)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        return record(args)
    except CannotRunError as err:
        message = f"gpu_check cannot run here: {err}"
        (args.out / "report.json").write_text(
            json.dumps({"passed": False, "cannot_run": str(err)}, indent=2) + "\n"
        )
        print(message, file=sys.stderr)
        return EXIT_CANNOT_RUN


if __name__ == "__main__":
    sys.exit(main())

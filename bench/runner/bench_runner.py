"""`trainop run` against plain torchrun: the same model, the same steps, on this machine.

Both train tinylm (trainop_runtime.examples.tinylm) with 2 workers on CPU (gloo), the
same seed, batch, checkpoint interval and threads per process:

- trainop: `trainop run` of examples/quickstart.yaml with --steps N: 2 local pods, each a
  launcher + torchrun agent (c10d rendezvous on a local store), workers forked by the
  zygote, a metrics sidecar per pod, the runner's display and its reconcile loop;
- torchrun: `torchrun --standalone --nproc-per-node=2 -m trainop_runtime.examples.tinylm`
  with --no-attempt-prefix (plain env:// key naming), OMP_NUM_THREADS=1 as torchrun sets
  for nproc > 1 and as trainop run sets here (cores / worker processes).

Each run's step time is the median gap between rank 0's consecutive step records
(--log-jsonl), after the first WARMUP steps. The two kinds alternate (A B A B ...), so
the machine's noise falls on both. The ratio is trainop's median over torchrun's.

    .venv/bin/python bench/runner/bench_runner.py --rounds 3 --steps 400
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from trainop_runtime.localjob import free_port

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
QUICKSTART = ROOT / "examples" / "quickstart.yaml"
WARMUP = 30
EVERY_STEPS = 20  # the quickstart's checkpoint interval, for both


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def step_times(log: Path) -> list[float]:
    steps = [
        json.loads(line)
        for line in log.read_text().splitlines()
        if line.strip() and json.loads(line)["event"] == "step"
    ]
    times = [s["time"] for s in steps[WARMUP:]]
    return [b - a for a, b in itertools.pairwise(times)]


def run_trainop(tmp: Path, steps: int) -> dict[str, Any]:
    log = tmp / "trainop.jsonl"
    doc = yaml.safe_load(QUICKSTART.read_text())
    doc["spec"]["entrypoint"]["args"] = ["--steps", str(steps), "--log-jsonl", str(log)]
    job = tmp / "job.yaml"
    job.write_text(yaml.safe_dump(doc))
    t0 = time.monotonic()
    res = subprocess.run(
        [sys.executable, "-m", "trainop.cli", "run", str(job), "--workdir", str(tmp / "w"),
         "--metrics-port", str(free_port())],
        capture_output=True, text=True, cwd=ROOT, timeout=1800, check=False,
    )  # fmt: skip
    if res.returncode != 0:
        raise SystemExit(f"trainop run failed:\n{res.stdout[-3000:]}")
    return {"wall_seconds": time.monotonic() - t0, "gaps": step_times(log)}


def run_torchrun(tmp: Path, steps: int) -> dict[str, Any]:
    log = tmp / "torchrun.jsonl"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "TRAINOP_CHECKPOINT_DIR": str(tmp / "ckpt"),
        "TRAINOP_CHECKPOINT_EVERY_STEPS": str(EVERY_STEPS),
        "TRAINOP_RUN_DIR": str(tmp / "run"),
    }
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    t0 = time.monotonic()
    res = subprocess.run(
        [torchrun, "--standalone", "--nproc-per-node=2", "-m",
         "trainop_runtime.examples.tinylm", "--steps", str(steps), "--log-jsonl", str(log),
         "--no-attempt-prefix"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=1800, check=False,
    )  # fmt: skip
    if res.returncode != 0:
        raise SystemExit(f"torchrun failed:\n{res.stdout[-3000:]}{res.stderr[-3000:]}")
    return {"wall_seconds": time.monotonic() - t0, "gaps": step_times(log)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--out", type=Path, default=HERE / "results.json")
    args = ap.parse_args()
    runs: list[dict[str, Any]] = []
    for i in range(args.rounds):
        for kind, fn in (("trainop", run_trainop), ("torchrun", run_torchrun)):
            with tempfile.TemporaryDirectory(prefix=f"bench-runner-{kind}-") as d:
                before = load()
                r = fn(Path(d), args.steps)
            median = statistics.median(r["gaps"])
            runs.append(
                {
                    "round": i,
                    "kind": kind,
                    "median_step_ms": round(1000 * median, 2),
                    "p90_step_ms": round(1000 * statistics.quantiles(r["gaps"], n=10)[-1], 2),
                    "steps_measured": len(r["gaps"]),
                    "wall_seconds": round(r["wall_seconds"], 1),
                    "load_before": before,
                    "load_after": load(),
                }
            )
            print(json.dumps(runs[-1]), flush=True)
    by = {
        kind: statistics.median(r["median_step_ms"] for r in runs if r["kind"] == kind)
        for kind in ("trainop", "torchrun")
    }
    per_round = [
        round(a["median_step_ms"] / b["median_step_ms"], 3)
        for a, b in zip(runs[::2], runs[1::2], strict=True)
    ]
    result = {
        "command": (
            f"python bench/runner/bench_runner.py --rounds {args.rounds} --steps {args.steps}"
        ),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, CPU only (gloo)",
        "model": "tinylm, 2 workers x 1 process, quickstart defaults, checkpoint every 20 steps",
        "warmup_steps_skipped": WARMUP,
        "median_step_ms": by,
        "ratio_trainop_over_torchrun": round(by["trainop"] / by["torchrun"], 3),
        "ratio_per_round": per_round,
        "runs": runs,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Recovery benchmark: time from a failure to the next completed step, and goodput.

Real processes, as in tests/trainer: a store and two torchrun agents on 127.0.0.1
running trainop_runtime.examples.tinylm. Timestamps come from the launcher's
agent-events.jsonl (rendezvous start/end) and the program's own log (process
start, process group ready, model built, checkpoint loaded, each step).

Breakdown of one recovery (kill at t0):
  detect        t0 -> the first agent starts a new rendezvous
  rendezvous    -> the last agent of the new round finishes it
  process start -> rank 0's process group is ready (interpreter, torch import, PG init)
  model build   -> model, optimizer and DDP built (DDP syncs with every rank)
  ckpt load     -> the checkpoint is read and applied
  first step    -> the first optimizer step of the new incarnation completes

    python bench/recovery/recovery.py --worker-kills 20 --pod-kills 3 --goodput-seconds 300
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from trainop_runtime.ettr import compute_ettr
from trainop_runtime.localjob import Agent, JobSpec, LocalJob, first, wait_for

PROGRAM = ("--batch-size", "8", "--seq-len", "32", "--d-model", "32", "--step-sleep", "0.02")
PHASES = ("detect", "rendezvous", "process_start", "model_build", "ckpt_load", "first_step")
TIMEOUT = 180.0


def _job(workdir: Path, *, nnodes: str, extra: tuple[str, ...] = (), **spec: Any) -> LocalJob:
    job = LocalJob(
        workdir,
        JobSpec(nnodes=nnodes, program_args=("--steps", "1000000", *PROGRAM, *extra), **spec),
    )
    job.start_store()
    return job


def _kill_worker(agent: Agent) -> float:
    pid = wait_for(lambda: first(agent.workers()), timeout=60, what="a worker")
    os.kill(pid, signal.SIGKILL)
    return time.time()


def measure_recovery(
    job: LocalJob, survivors: list[Agent], kill: float, *, timeout: float = TIMEOUT
) -> dict[str, Any]:
    """One recovery's timeline, from the logs, once its first step has completed."""
    start = job.wait_for_start(kill, timeout=timeout)

    def first_step() -> dict[str, Any] | None:
        after = [e for e in job.events("step") if e["time"] > start["time"]]
        return after[0] if after else None

    step = wait_for(first_step, timeout=TIMEOUT, what="the first step after recovery")
    agent_events = [e for a in survivors for e in a.events() if kill < e["time"] <= step["time"]]
    rdzv_starts = [e["time"] for e in agent_events if e["event"] == "rendezvous_start"]
    rdzv_ends = [e["time"] for e in agent_events if e["event"] == "rendezvous_end"]
    rounds = [
        sum(1 for e in a.events() if e["event"] == "rendezvous_end" and kill < e["time"])
        for a in survivors
    ]
    marks = [
        kill,
        min(rdzv_starts),
        max(rdzv_ends),
        start["pg_ready"],
        start["model_ready"],
        start["checkpoint_loaded"],
        step["time"],
    ]
    phases = {
        name: round(b - a, 3) for name, a, b in zip(PHASES, marks[:-1], marks[1:], strict=True)
    }
    return {
        "total": round(step["time"] - kill, 3),
        **phases,
        "resumed_step": start["resumed_step"],
        "world_size": start["world_size"],
        # More than one new round on an agent means a restart failed and was retried.
        "wasted_restarts": max(rounds) - 1,
    }


NO_ZYGOTE = {"TRAINOP_ZYGOTE": "0"}


def worker_kills(
    workdir: Path, kills: int, *, prefix: bool, zygote: bool = True
) -> list[dict[str, Any]]:
    extra = () if prefix else ("--no-attempt-prefix",)
    env = {} if zygote else NO_ZYGOTE
    trials = []
    with _job(workdir, nnodes="2:2", extra=extra, max_restarts=3 * kills, extra_env=env) as job:
        agents = [job.start_agent("a"), job.start_agent("b")]
        job.wait_for_step(20, timeout=TIMEOUT)
        for i in range(kills):
            job.wait_for_step(job.last_step() + 20, timeout=TIMEOUT)
            kill = _kill_worker(agents[i % 2])
            try:
                # Without the fix a stuck restart never ends; 90 s is 10x a normal one.
                trial = measure_recovery(job, agents, kill, timeout=TIMEOUT if prefix else 90)
            except TimeoutError as e:
                trial = {"error": str(e)}
            trials.append(trial)
            print(
                f"worker kill {i + 1}/{kills} (prefix={prefix}, zygote={zygote}): {trial}",
                flush=True,
            )
            if "error" in trial:
                break
    return trials


def pod_kills(workdir: Path, kills: int) -> dict[str, list[dict[str, Any]]]:
    """Lose a whole pod (agent + workers) above min nodes; alternately the first pod."""
    out: dict[str, list[dict[str, Any]]] = {"first_pod": [], "other_pod": []}
    with _job(workdir, nnodes="1:2") as job:
        job.start_agent("a")
        job.start_agent("b")
        job.wait_for_step(20, timeout=TIMEOUT)
        for i in range(2 * kills):
            victim, survivor = ("a", "b") if i % 2 == 0 else ("b", "a")
            kind = "first_pod" if victim == "a" else "other_pod"
            job.wait_for_step(job.last_step() + 20, timeout=TIMEOUT)
            kill = time.time()
            job.kill_agent(victim)
            trial = measure_recovery(job, [job.agents[survivor]], kill)
            out[kind].append(trial)
            print(f"pod kill {i + 1}/{2 * kills} ({kind}): {trial}", flush=True)
            rejoin = time.time()
            job.start_agent(victim)
            grown = job.wait_for_start(rejoin, timeout=TIMEOUT)
            assert grown["world_size"] == 2
    return out


def goodput(
    workdir: Path, seconds: float, every: float, ckpt_seconds: float, *, zygote: bool = True
) -> dict[str, Any]:
    """Effective training time ratio: time in kept steps / wall time, one worker kill per period."""
    env = {"TRAINOP_CHECKPOINT_EVERY_SECONDS": str(ckpt_seconds), **({} if zygote else NO_ZYGOTE)}
    with _job(
        workdir, nnodes="2:2", max_restarts=1000, checkpoint_every_steps=0, extra_env=env
    ) as job:
        agents = [job.start_agent("a"), job.start_agent("b")]
        first = job.wait_for_step(1, timeout=TIMEOUT)
        t0 = first["time"]
        kills = 0
        while time.time() - t0 < seconds:
            deadline = t0 + (kills + 1) * every
            if deadline >= t0 + seconds:
                time.sleep(max(0.0, t0 + seconds - time.time()))
                break
            time.sleep(max(0.0, deadline - time.time()))
            _kill_worker(agents[kills % 2])
            kills += 1
        end = time.time()
        events = [e for e in job.events() if e["time"] <= end]
    return {"kills": kills, **kept_time_ratio(events, t0=t0, end=end)}


def kept_time_ratio(events: list[dict[str, Any]], *, t0: float, end: float) -> dict[str, Any]:
    """ETTR as the runner prints it (trainop_runtime.ettr), from rank 0's own log: every
    worker-group start is a mark at its resume step, every step a mark of its own."""
    marks = [
        (e["time"], int(e["resumed_step"] if e["event"] == "start" else e["step"]))
        for e in events
        if e["event"] in ("start", "step")
    ]
    ettr = compute_ettr(marks, start=t0, end=end)
    return {
        "wall_seconds": round(ettr.wall, 1),
        "kept_step_seconds": round(ettr.kept, 1),
        "kept_steps": ettr.kept_steps,
        "ratio": round(ettr.ratio or 0.0, 4),
        "lost_seconds": round(ettr.lost, 1),
        "recovery_seconds": round(ettr.recovery, 1),
        "stall_seconds": round(ettr.stalls, 1),
    }


def summarize(trials: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [t for t in trials if "error" not in t]
    if not ok:
        return {"n": len(trials), "recovered": 0}
    return {
        "n": len(trials),
        "recovered": len(ok),
        "wasted_restarts": sum(t["wasted_restarts"] for t in ok),
        "p50": {k: round(statistics.median(t[k] for t in ok), 2) for k in ("total", *PHASES)},
        "max_total": round(max(t["total"] for t in ok), 2),
    }


def to_markdown(results: dict[str, Any]) -> str:
    lines = [
        "# Recovery benchmark results",
        "",
        f"Machine: {results['machine']}. Command: `{results['command']}`.",
        "",
        "## Time from a kill to the next completed step (seconds, p50)",
        "",
        "| failure | n | recovered | wasted restarts | total | "
        + " | ".join(PHASES)
        + " | max total |",
        "|---" * (5 + len(PHASES) + 1) + "|",
    ]
    for name, trials in results["recovery"].items():
        s = summarize(trials)
        if "p50" not in s:
            lines.append(f"| {name} | {s['n']} | 0 | - |" + " - |" * (len(PHASES) + 2))
            continue
        p = s["p50"]
        cells = [name, s["n"], s["recovered"], s["wasted_restarts"], p["total"]]
        cells += [p[k] for k in PHASES] + [s["max_total"]]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    g = results.get("goodput")
    if g:
        lines += [
            "",
            "## Effective training time ratio",
            "",
            f"One worker SIGKILL every {g['every']:.0f} s over {g['wall_seconds']} s of training"
            f" ({g['kills']} kills), checkpoint every {g['ckpt_seconds']:g} s,"
            f" zygote {'on' if g.get('zygote', True) else 'off'}:"
            f" **{100 * g['ratio']:.1f} %** of wall time in steps that were kept"
            f" ({g['kept_step_seconds']} s, {g['kept_steps']} steps).",
            "",
            f"The rest, {g['wall_seconds'] - g['kept_step_seconds']:.1f} s: lost work (steps"
            f" trained past the last checkpoint, redone) {g['lost_seconds']} s, recovery"
            f" (detection, rendezvous, process start, checkpoint load) {g['recovery_seconds']} s,"
            f" stalls {g['stall_seconds']} s.",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker-kills", type=int, default=20)
    p.add_argument("--no-prefix-kills", type=int, default=0, help="the same without the fix")
    p.add_argument(
        "--no-zygote-kills", type=int, default=0, help="worker kills with TRAINOP_ZYGOTE=0"
    )
    p.add_argument("--goodput-no-zygote", action="store_true", help="goodput with TRAINOP_ZYGOTE=0")
    p.add_argument("--pod-kills", type=int, default=3, help="per kind (first pod, other pod)")
    p.add_argument("--goodput-seconds", type=float, default=300.0, help="0 skips it")
    p.add_argument("--goodput-every", type=float, default=60.0)
    p.add_argument("--goodput-checkpoint-seconds", type=float, default=10.0)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    ns = p.parse_args()

    recovery: dict[str, list[dict[str, Any]]] = {}
    results: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs,"
        f" torch {torch.__version__}, CPU/gloo",
        "command": "python bench/recovery/recovery.py "
        + " ".join(
            f"--{k.replace('_', '-')}" + ("" if isinstance(v, bool) else f" {v}")
            for k, v in vars(ns).items()
            if k != "out" and v is not False
        ),
        "recovery": recovery,
    }
    with tempfile.TemporaryDirectory(prefix="trainop-bench-") as tmp:
        work = Path(tmp)
        if ns.worker_kills:
            recovery["worker SIGKILL"] = worker_kills(work / "w", ns.worker_kills, prefix=True)
        if ns.no_prefix_kills:
            recovery["worker SIGKILL, no attempt prefix"] = worker_kills(
                work / "np", ns.no_prefix_kills, prefix=False
            )
        if ns.no_zygote_kills:
            recovery["worker SIGKILL, no zygote"] = worker_kills(
                work / "nz", ns.no_zygote_kills, prefix=True, zygote=False
            )
        if ns.pod_kills:
            pods = pod_kills(work / "p", ns.pod_kills)
            recovery["pod lost (first pod)"] = pods["first_pod"]
            recovery["pod lost (other pod)"] = pods["other_pod"]
        if ns.goodput_seconds:
            g = goodput(
                work / "g",
                ns.goodput_seconds,
                ns.goodput_every,
                ns.goodput_checkpoint_seconds,
                zygote=not ns.goodput_no_zygote,
            )
            results["goodput"] = {
                **g,
                "every": ns.goodput_every,
                "ckpt_seconds": ns.goodput_checkpoint_seconds,
                "zygote": not ns.goodput_no_zygote,
            }
    results["summary"] = {name: summarize(t) for name, t in recovery.items()}
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    ns.out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    ns.out.with_suffix(".md").write_text(to_markdown(results))
    print(to_markdown(results))


if __name__ == "__main__":
    main()

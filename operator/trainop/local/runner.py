"""`trainop run FILE`: a TrainingJob on this machine, no cluster.

Same validation (parse_spec), same pod builders, same policy (core.compute_plan)
as the operator: only the "cluster" differs. Pods are local processes: the
rendezvous store and one launcher agent per worker, with the exact command and
env the operator would give the pod, pointed at 127.0.0.1 and a work dir.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import yaml

from trainop.api import constants as c
from trainop.api.parse import parse_spec
from trainop.api.spec import TrainingJobSpec
from trainop.api.status import Phase, TrainingJobStatus
from trainop.core.build import JobRef
from trainop.core.config import OperatorConfig
from trainop.core.observe import ObservedPod, Termination
from trainop.core.plan import Observed, Plan, compute_plan
from trainop.exporter.names import GPU_ENERGY
from trainop.local.chaos import ChaosClock
from trainop_runtime import contract as rc
from trainop_runtime.localjob import free_port, worker_pids


class SpecError(Exception):
    """The file is not a valid TrainingJob; the message says what to fix."""


def load_job(path: Path) -> tuple[str, TrainingJobSpec]:
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SpecError(f"{path}: cannot read YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise SpecError(f"{path}: expected a TrainingJob object, got {type(doc).__name__}")
    if doc.get("apiVersion") != c.API_VERSION or doc.get("kind") != c.KIND:
        raise SpecError(
            f"{path}: expected apiVersion {c.API_VERSION} and kind {c.KIND}, "
            f"got {doc.get('apiVersion')!r} {doc.get('kind')!r}"
        )
    name = str((doc.get("metadata") or {}).get("name") or "")
    if not name or len(name) > 40:
        raise SpecError(f"{path}: metadata.name must be 1-40 characters")
    spec, error = parse_spec(doc.get("spec"))
    if spec is None:
        raise SpecError(f"{path}: {error}")
    return name, spec


@dataclass
class LocalPod:
    manifest: dict[str, Any]
    proc: subprocess.Popen[bytes]
    run_dir: Path
    termination_log: Path
    log: IO[bytes]
    uid: str = field(default_factory=lambda: uuid.uuid4().hex)
    kill_at: float | None = None  # SIGKILL deadline after a graceful delete

    @property
    def name(self) -> str:
        return str(self.manifest["metadata"]["name"])

    def observe(self) -> ObservedPod:
        labels = self.manifest["metadata"]["labels"]
        code = self.proc.poll()
        phase = "Running" if code is None else ("Succeeded" if code == 0 else "Failed")
        term = None
        if code is not None:
            exit_code = 128 - code if code < 0 else code  # a signal -> 128+N, like a kubelet
            with contextlib.suppress(OSError):
                message = self.termination_log.read_text().strip()
                term = Termination(exit_code, "Error" if code else "Completed", message)
            term = term or Termination(exit_code, "Error" if code else "Completed", "")
        progress: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            progress = json.loads((self.run_dir / rc.PROGRESS_FILE).read_text())
        slot = labels.get(c.LABEL_SLOT)
        return ObservedPod(
            name=self.name,
            uid=self.uid,
            role=labels[c.LABEL_ROLE],
            slot=int(slot) if slot is not None else None,
            job_generation=int(labels.get(c.LABEL_JOB_GENERATION, "0")),
            phase=phase,
            ready=phase == "Running",
            deleting=self.kill_at is not None,
            trainer=term,
            progress=progress if isinstance(progress, dict) else {},
        )


class LocalCluster:
    """Plays the API server and kubelet for one job: plans in, processes out."""

    def __init__(
        self, name: str, spec: TrainingJobSpec, workdir: Path, say: Callable[[str], None]
    ) -> None:
        self.name, self.spec, self.workdir, self.say = name, spec, workdir, say
        self.job = JobRef(name=name, namespace="local", uid=f"local-{name}", labels={})
        self.port = free_port()
        self.pods: dict[str, LocalPod] = {}
        self.status = TrainingJobStatus()
        self.checkpoints = workdir / "checkpoints"
        self.checkpoints.mkdir(parents=True, exist_ok=True)

    def observed(self) -> Observed:
        return Observed(
            job=self.job,
            generation=1,
            spec=self.spec,
            spec_error=None,
            status=self.status,
            pods=[p.observe() for p in self.pods.values()],
            service_exists=True,
        )

    def act(self, plan: Plan) -> None:
        self.status = plan.status
        for ev in plan.events:
            self.say(f"[{ev.type.lower()}] {ev.reason}: {ev.message}")
        for d in plan.deletes:
            pod = self.pods.get(d.name)
            if pod is None:
                continue
            if d.grace_seconds == 0 or pod.proc.poll() is not None:
                self._kill(pod, signal.SIGKILL)
                self._forget(pod)
            elif pod.kill_at is None:
                self._kill(pod, signal.SIGTERM)
                pod.kill_at = time.monotonic() + self.spec.termination_grace_period_seconds
        for obj in plan.creates:
            if obj["kind"] == "Pod" and obj["metadata"]["name"] not in self.pods:
                self._spawn(obj)

    def reap(self) -> None:
        """Finish graceful deletes: gone once exited, SIGKILLed at the grace deadline."""
        for pod in list(self.pods.values()):
            if pod.kill_at is None:
                continue
            if pod.proc.poll() is not None:
                self._forget(pod)
            elif time.monotonic() >= pod.kill_at:
                self._kill(pod, signal.SIGKILL)
                self._forget(pod)

    def _spawn(self, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        container = obj["spec"]["containers"][0]
        run_dir = self.workdir / "run" / name
        run_dir.mkdir(parents=True, exist_ok=True)
        term_log = run_dir / "termination-log"
        term_log.unlink(missing_ok=True)
        env = {**os.environ}
        for var in container.get("env", []):
            if "value" in var:
                env[var["name"]] = var["value"]
            elif (var.get("valueFrom") or {}).get("fieldRef", {}).get("fieldPath") == (
                "metadata.name"
            ):
                env[var["name"]] = name
        env.update(
            {
                rc.PET_RDZV_ENDPOINT: f"127.0.0.1:{self.port}",
                rc.ENV_RUN_DIR: str(run_dir),
                rc.ENV_CHECKPOINT_DIR: str(self.checkpoints),
                rc.ENV_TERMINATION_LOG: str(term_log),
                # Fast failure detection on one machine; a pod network needs torch's defaults.
                rc.PET_RDZV_CONF: env.get(rc.PET_RDZV_CONF, rc.RDZV_CONF_IS_HOST)
                + ",keep_alive_interval=1,keep_alive_max_attempt=3",
                "PYTHONUNBUFFERED": "1",
            }
        )
        argv = [
            sys.executable if a == "python" else a
            for a in [*container.get("command", []), *container.get("args", [])]
        ]
        if obj["metadata"]["labels"][c.LABEL_ROLE] == c.ROLE_STORE:
            argv = [sys.executable, "-m", rc.STORE_MODULE, "--port", str(self.port)]
        log = (self.workdir / "logs" / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            argv,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.pods[name] = LocalPod(obj, proc, run_dir, term_log, log)

    def _kill(self, pod: LocalPod, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pod.proc.pid, sig)

    def _forget(self, pod: LocalPod) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            pod.proc.wait(timeout=5)
        pod.log.close()
        self.pods.pop(pod.name, None)

    def running(self) -> bool:
        return any(p.proc.poll() is None for p in self.pods.values())

    def kill_random_worker(self, rng: random.Random) -> str | None:
        """Chaos: SIGKILL one worker process inside a random live agent."""
        agents = [
            p
            for p in self.pods.values()
            if p.observe().role == c.ROLE_WORKER and p.proc.poll() is None and p.kill_at is None
        ]
        if not agents:
            return None
        agent = rng.choice(agents)
        workers = worker_pids(agent.proc.pid)
        if not workers:
            return None
        with contextlib.suppress(ProcessLookupError):
            os.kill(rng.choice(workers), signal.SIGKILL)
        return agent.name

    def shutdown(self) -> None:
        for pod in self.pods.values():
            self._kill(pod, signal.SIGTERM)
        deadline = time.monotonic() + self.spec.termination_grace_period_seconds
        for pod in list(self.pods.values()):
            with contextlib.suppress(subprocess.TimeoutExpired):
                pod.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            self._kill(pod, signal.SIGKILL)
            self._forget(pod)


def utcnow() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


@dataclass(frozen=True)
class RunOptions:
    workdir: Path = Path(".trainop")
    metrics_port: int = 9400
    kill_every: float | None = None
    kill_every_steps: int | None = None
    seed: int = 0
    replicas: int | None = None
    tick: float = 0.5
    view_every: float = 2.0


@dataclass
class Summary:
    phase: str
    reason: str
    wall_seconds: float
    steps: int
    first_loss: float | None
    last_loss: float | None
    restarts: int
    in_place_restarts: int
    kills: int
    effective_ratio: float | None
    energy_joules: float | None

    def lines(self) -> list[str]:
        ratio = f"{self.effective_ratio:.1%}" if self.effective_ratio is not None else "n/a"
        energy = (
            f"{self.energy_joules / 3.6e6:.4f} kWh ({self.energy_joules:.0f} J)"
            if self.energy_joules is not None
            else "not measured (no GPU seen)"
        )
        return [
            f"job {self.phase} ({self.reason}) in {self.wall_seconds:.1f} s",
            f"steps {self.steps}, loss {self.first_loss} -> {self.last_loss}",
            f"restarts: {self.restarts} counted, {self.in_place_restarts} in place, "
            f"{self.kills} injected kills",
            f"effective training time ratio {ratio}",
            f"GPU energy {energy}",
        ]


@dataclass
class _Tally:
    """What the run loop records for the final summary."""

    kills: int = 0
    losses: list[float] = field(default_factory=list)
    step_times: dict[int, float] = field(default_factory=dict)


def run(path: Path, opts: RunOptions, say: Callable[[str], None] = print) -> Summary:
    name, spec = load_job(path)
    if opts.replicas is not None:
        spec = TrainingJobSpec.model_validate(
            {**spec.model_dump(by_alias=True, exclude_none=True), "replicas": opts.replicas}
        )
    workdir = opts.workdir / name
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    cluster = LocalCluster(name, spec, workdir, say)
    exporter = _start_exporter(workdir, name, opts.metrics_port)
    say(
        f"running {name}: {spec.replicas} worker(s) x {spec.procs_per_node} process(es); "
        f"checkpoints in {cluster.checkpoints}; logs in {workdir / 'logs'}"
    )
    say(f"metrics: http://127.0.0.1:{opts.metrics_port}/metrics")
    started = time.monotonic()
    tally = _Tally()
    interrupted = False
    try:
        _drive(cluster, opts, tally, say)
    except KeyboardInterrupt:
        interrupted = True
        say("stopping: workers get their grace period to save a checkpoint ...")
    finally:
        energy = _scrape_energy(opts.metrics_port)
        cluster.shutdown()
        exporter.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            exporter.wait(timeout=5)
    st = cluster.status
    wall = time.monotonic() - started
    steps = (st.progress.step or 0) if st.progress else 0
    summary = Summary(
        phase="Interrupted" if interrupted else (st.phase.value if st.phase else "Unknown"),
        reason="Ctrl-C; run the same command again to resume" if interrupted else (st.reason or ""),
        wall_seconds=wall,
        steps=steps,
        first_loss=tally.losses[0] if tally.losses else None,
        last_loss=tally.losses[-1] if tally.losses else None,
        restarts=st.restarts,
        in_place_restarts=_in_place_restarts(cluster),
        kills=tally.kills,
        effective_ratio=_effective_ratio(tally.step_times, steps, wall),
        energy_joules=energy,
    )
    (workdir / "summary.json").write_text(json.dumps(summary.__dict__, indent=2) + "\n")
    for line in summary.lines():
        say(line)
    return summary


def _drive(
    cluster: LocalCluster, opts: RunOptions, tally: _Tally, say: Callable[[str], None]
) -> None:
    """observe -> compute_plan -> act, every tick, until the job is over."""
    rng = random.Random(opts.seed)  # noqa: S311 (choosing chaos victims, not secrets)
    config = OperatorConfig()
    now = time.monotonic()
    next_view = now
    chaos = ChaosClock(seconds=opts.kill_every, steps=opts.kill_every_steps)
    while True:
        cluster.reap()
        cluster.act(compute_plan(cluster.observed(), utcnow(), config))
        _collect(cluster, tally.losses, tally.step_times)
        st = cluster.status
        if st.phase is not None and st.phase.finished and not cluster.running():
            return
        now = time.monotonic()
        if now >= next_view:
            say(_view_line(cluster))
            next_view = now + opts.view_every
        step = st.progress.step if st.progress else None
        if st.phase is Phase.RUNNING and step is not None and chaos.due(now, step):
            victim = cluster.kill_random_worker(rng)
            if victim:
                tally.kills += 1
                chaos.killed(step)
                say(f"[chaos] killed a worker process of {victim} at step {step}")
        time.sleep(opts.tick)


def _collect(cluster: LocalCluster, losses: list[float], step_times: dict[int, float]) -> None:
    progress = cluster.status.progress
    if progress is None or progress.step is None:
        return
    if progress.step not in step_times and progress.loss is not None:
        losses.append(progress.loss)
    for pod in cluster.pods.values():
        report = pod.observe().progress
        step, took = report.get(rc.P_STEP), report.get(rc.P_STEP_SECONDS)
        if isinstance(step, int) and isinstance(took, int | float):
            step_times.setdefault(step, float(took))


def _effective_ratio(step_times: dict[int, float], steps: int, wall: float) -> float | None:
    """Time the kept steps took / wall time. Kept steps are 1..final step; each is
    costed at the median observed step time (we sample progress, not every step)."""
    if not step_times or steps <= 0 or wall <= 0:
        return None
    ordered = sorted(step_times.values())
    median = ordered[len(ordered) // 2]
    return min(1.0, steps * median / wall)


def _in_place_restarts(cluster: LocalCluster) -> int:
    return max(
        (int(p.observe().progress.get(rc.P_RESTARTS) or 0) for p in cluster.pods.values()),
        default=0,
    )


def _view_line(cluster: LocalCluster) -> str:
    st = cluster.status
    p = st.progress
    parts = [
        f"{(st.phase.value if st.phase else 'Pending'):<10}",
        f"workers {st.workers or '0/0'}",
        f"restarts {st.restarts_summary or '0'}",
    ]
    if p is not None:
        parts.append(f"step {p.summary}")
        if p.loss is not None:
            parts.append(f"loss {p.loss:.4f}")
        if p.samples_per_second is not None:
            parts.append(f"{p.samples_per_second:.0f} samples/s")
        if p.checkpoint_step is not None:
            parts.append(f"ckpt @{p.checkpoint_step}")
    return " | ".join(parts)


def _start_exporter(workdir: Path, name: str, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        rc.ENV_RUN_DIR: str(workdir / "run" / f"{name}-worker-0"),
        rc.ENV_JOB_NAME: name,
        rc.ENV_JOB_NAMESPACE: "local",
        rc.ENV_POD_NAME: f"{name}-worker-0",
    }
    log = (workdir / "logs" / "metrics-exporter.log").open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "trainop.exporter", "--address", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _scrape_energy(port: int) -> float | None:
    import urllib.request  # noqa: PLC0415 (only needed once, at the end)

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    total = None
    for line in text.splitlines():
        if line.startswith(GPU_ENERGY + "{"):
            total = (total or 0.0) + float(line.rsplit(" ", 1)[1])
    return total

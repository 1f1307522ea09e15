"""`trainop run FILE`: a TrainingJob on this machine, no cluster.

Same validation (parse_spec), same pod builders, same policy (core.compute_plan)
as the operator: only the "cluster" differs. Pods are local processes: the
rendezvous store and one launcher agent per worker, with the exact command and
env the operator would give the pod, pointed at 127.0.0.1 and a work dir.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import IO, Any

import yaml
from rich.console import Console

from trainop.api import constants as c
from trainop.api.parse import parse_spec
from trainop.api.spec import TrainingJobSpec
from trainop.api.status import LastFailure, Phase, Progress, TrainingJobStatus
from trainop.core.build import THREADS_ENV, JobRef, threads_per_process, user_sets_threads
from trainop.core.config import OperatorConfig
from trainop.core.observe import ObservedPod, Termination
from trainop.core.plan import Observed, Plan, compute_plan
from trainop.local import devices, oom
from trainop.local.chaos import ChaosClock, kills_left
from trainop.local.display import Display, compute_rate, compute_view, format_loss, resume_note
from trainop.local.energy import energy_used
from trainop.local.fit import fit_to_machine, this_machine, usable_cores
from trainop_runtime import contract as rc
from trainop_runtime.ettr import Mark, compute_ettr
from trainop_runtime.localjob import free_port, kill_tree, worker_pids

# What stops a run cleanly: Ctrl-C, `kill`, a closed terminal. A second one forces it.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class SpecError(Exception):
    """The file is not a valid TrainingJob; the message says what to fix."""


def load_job(path: Path, replicas: int | None = None) -> tuple[str, TrainingJobSpec]:
    """The file's name and spec, validated as the operator does; `replicas` overrides
    spec.replicas and goes through the same validation."""
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
    raw = doc.get("spec")
    spec, error = parse_spec(raw)
    if spec is None:
        raise SpecError(
            f"{path}: invalid TrainingJob: {error}\n"
            f"fix the field(s) named above; `kubectl explain trainingjob.spec.<field>` "
            f"describes each one"
        )
    if replicas is not None and isinstance(raw, dict):
        overridden, error = parse_spec({**raw, "replicas": replicas})
        if overridden is None:
            raise SpecError(
                f"--replicas {replicas}: {error}; this job allows --replicas "
                f"{spec.min_nodes}..{spec.max_nodes} (spec.minReplicas..spec.maxReplicas in {path})"
            )
        spec = overridden
    return name, spec


# prctl(PR_SET_PDEATHSIG): Linux only; elsewhere children outlive a SIGKILLed runner.
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
_PR_SET_PDEATHSIG = 1


def _die_with_runner(runner: int) -> Callable[[], None]:
    """preexec_fn: the child gets SIGTERM when the runner dies, even by SIGKILL, so a
    launcher still checkpoints and exits, as a pod does when its node drains."""

    def preexec() -> None:
        if _LIBC is not None:
            _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != runner:  # the runner died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def _start(argv: list[str], env: dict[str, str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    # Own session: Ctrl-C in the terminal reaches only the runner, which stops the
    # pods in order (workers checkpoint first, the store goes last).
    return subprocess.Popen(
        argv,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=_die_with_runner(os.getpid()),  # noqa: PLW1509 (the runner starts no threads)
    )


@dataclass
class LocalPod:
    manifest: dict[str, Any]
    proc: subprocess.Popen[bytes]
    run_dir: Path
    termination_log: Path
    log: IO[bytes]
    oom_at_start: int | None
    uid: str = field(default_factory=lambda: uuid.uuid4().hex)
    # metadata.creationTimestamp, to the microsecond: the failure policy tells a store
    # replaced since a worker started (a free RendezvousLost) by it, and here a store
    # and a worker may well start within the same second.
    created: datetime = field(default_factory=lambda: datetime.now(UTC))
    kill_at: float | None = None  # SIGKILL deadline after a graceful delete
    _term: Termination | None = None

    @property
    def name(self) -> str:
        return str(self.manifest["metadata"]["name"])

    def termination(self) -> Termination | None:
        """Read once, when first seen exited: the OOM count must be the one at its death."""
        code = self.proc.poll()
        if code is None:
            return None
        if self._term is None:
            exit_code = 128 - code if code < 0 else code  # a signal -> 128+N, like a kubelet
            message = ""
            with contextlib.suppress(OSError):
                message = self.termination_log.read_text().strip()
            reason = oom.termination_reason(exit_code, self.oom_at_start, oom.oom_kill_count())
            self._term = Termination(exit_code, reason, message)
        return self._term

    def observe(self) -> ObservedPod:
        labels = self.manifest["metadata"]["labels"]
        code = self.proc.poll()
        phase = "Running" if code is None else ("Succeeded" if code == 0 else "Failed")
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
            created=self.created,
            deleting=self.kill_at is not None,
            trainer=self.termination(),
            progress=progress if isinstance(progress, dict) else {},
        )

    @property
    def role(self) -> str:
        return str(self.manifest["metadata"]["labels"][c.LABEL_ROLE])


def _threads_note(spec: TrainingJobSpec) -> str:
    if user_sets_threads(spec):
        return "threads per process from spec.env"
    return f"{local_threads(spec, usable_cores())} thread(s) per process"


def local_threads(spec: TrainingJobSpec, cores: int) -> int:
    """Intra-op threads per worker process here: cores ÷ every worker process."""
    return threads_per_process(cores, spec.replicas * spec.procs_per_node)


class LocalCluster:
    """Plays the API server and kubelet for one job: plans in, processes out."""

    def __init__(
        self,
        name: str,
        spec: TrainingJobSpec,
        workdir: Path,
        say: Callable[[str], None],
        gpus: devices.Allocation,
    ) -> None:
        self.name, self.spec, self.workdir, self.say = name, spec, workdir, say
        self.gpus = gpus
        self.job = JobRef(name=name, namespace="local", uid=f"local-{name}", labels={})
        self.port = free_port()
        self.pods: dict[str, LocalPod] = {}
        self.worker_run_dirs: set[Path] = set()
        self.status = TrainingJobStatus()
        self.checkpoints = workdir / "checkpoints"
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        self.found_checkpoints = self.has_checkpoints()

    def has_checkpoints(self) -> bool:
        """Whatever their format (a user's script has its own), files here mean the
        workers may resume from them; dot files are the temps of a killed writer."""
        return any(not p.name.startswith(".") for p in self.checkpoints.iterdir())

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
        labels = obj["metadata"]["labels"]
        container = obj["spec"]["containers"][0]
        run_dir = self.workdir / "run" / name
        run_dir.mkdir(parents=True, exist_ok=True)
        # A pod's emptyDir starts empty: a previous run's progress would read as this one's.
        for stale in ("termination-log", rc.PROGRESS_FILE, rc.GPUS_FILE):
            (run_dir / stale).unlink(missing_ok=True)
        term_log = run_dir / "termination-log"
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
        if labels[c.LABEL_ROLE] == c.ROLE_STORE:
            argv = [sys.executable, "-m", rc.STORE_MODULE, "--port", str(self.port)]
        else:
            # What the device plugin does for a pod: this slot's GPUs only, or none.
            env["CUDA_VISIBLE_DEVICES"] = self.gpus.visible_devices(int(labels[c.LABEL_SLOT]))
            if not user_sets_threads(self.spec):
                # Every process of every worker shares this machine's cores: a pod's
                # CPU figure (or torch's thread-per-core default) would oversubscribe them.
                env[THREADS_ENV] = str(local_threads(self.spec, usable_cores()))
            self.worker_run_dirs.add(run_dir)
        log = (self.workdir / "logs" / f"{name}.log").open("ab")
        proc = _start(argv, env, log)
        self.pods[name] = LocalPod(obj, proc, run_dir, term_log, log, oom.oom_kill_count())

    def _kill(self, pod: LocalPod, sig: signal.Signals) -> None:
        if sig == signal.SIGKILL:
            # torchrun starts each worker in its own session: a group kill would miss
            # them, where a pod's cgroup takes the whole tree.
            kill_tree(pod.proc.pid, sig)
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pod.proc.pid, sig)

    def _forget(self, pod: LocalPod) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            pod.proc.wait(timeout=5)
        pod.log.close()
        self.pods.pop(pod.name, None)

    def last_reports(self) -> list[dict[str, Any]]:
        """Every worker's last progress report, read after the pods are gone: the final
        step and checkpoint come after the last plan saw them."""
        reports = []
        for run_dir in sorted(self.worker_run_dirs):
            with contextlib.suppress(OSError, ValueError):
                doc = json.loads((run_dir / rc.PROGRESS_FILE).read_text())
                if isinstance(doc, dict):
                    reports.append(doc)
        return reports

    def running(self) -> bool:
        return any(p.proc.poll() is None for p in self.pods.values())

    def kill_random_worker(self, rng: random.Random) -> str | None:
        """Chaos: SIGKILL one worker process inside a random live agent."""
        agents = [
            p
            for p in self.pods.values()
            if p.role == c.ROLE_WORKER and p.proc.poll() is None and p.kill_at is None
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

    def shutdown(self, forced: Callable[[], bool]) -> None:
        """Workers get their grace period to checkpoint, then the store goes; `forced()`
        turning true (a second Ctrl-C) cuts the wait short."""
        workers = [p for p in self.pods.values() if p.role != c.ROLE_STORE]
        stores = [p for p in self.pods.values() if p.role == c.ROLE_STORE]
        for group, grace in (
            (workers, self.spec.termination_grace_period_seconds),
            (stores, 5.0),
        ):
            for pod in group:
                self._kill(pod, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while (
                any(p.proc.poll() is None for p in group)
                and time.monotonic() < deadline
                and not forced()
            ):
                time.sleep(0.1)
            if forced() and any(p.proc.poll() is None for p in group):
                self.say("stopping now: SIGKILL, no checkpoint")
            for pod in group:
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
    first_step: int | None  # the first step this run reported (> 1 when it resumed)
    steps_run: int  # steps trained by this run and kept
    checkpoint_step: int | None
    first_loss: float | None
    last_loss: float | None
    restarts: int
    in_place_restarts: int
    kills: int
    effective_ratio: float | None
    ettr: str  # the ratio with its definition and parts, as printed
    ettr_seconds: dict[str, float]  # its parts: kept, startup, lost, recovery, stalls, shutdown
    devices: str
    energy_joules: float | None
    signal: int | None  # what stopped it early (2: Ctrl-C, 15: SIGTERM, 1: SIGHUP)
    last_failure: str | None = None  # its root cause, as status.lastFailure has it

    def lines(self) -> list[str]:
        energy = (
            f"{self.energy_joules / 3.6e6:.4f} kWh ({self.energy_joules:.0f} J)"
            if self.energy_joules is not None
            else "not measured (no GPU of the job was read)"
        )
        resumed = (
            f" (resumed at step {self.first_step})"
            if self.first_step is not None and self.first_step > 1
            else ""
        )
        # The reason only when it adds something: "Succeeded (Succeeded)" said it twice.
        why = f" ({self.reason})" if self.reason and self.reason != self.phase else ""
        checkpoint = (
            f"last checkpoint at step {self.checkpoint_step}"
            if self.checkpoint_step is not None
            else "no checkpoint"
        )
        first, last = format_loss(self.first_loss), format_loss(self.last_loss)
        loss = f"loss {first} -> {last}" if first is not None else "no loss reported"
        return [
            f"job {self.phase}{why} in {self.wall_seconds:.1f} s, {self.devices}",
            f"steps {self.steps}, {self.steps_run} in this run{resumed}; {checkpoint}; {loss}",
            f"restarts: {self.restarts} counted against the budget "
            f"({self.in_place_restarts} of them in place), {self.kills} injected kills",
            *([f"last failure: {self.last_failure}"] if self.last_failure else []),
            self.ettr,
            f"GPU energy {energy}",
        ]


@dataclass
class _Tally:
    """What the run loop records for the final summary."""

    kills: int = 0
    first_step: int | None = None
    losses: list[float] = field(default_factory=list)
    seen_steps: set[int] = field(default_factory=set)
    marks: list[Mark] = field(default_factory=list)  # (monotonic time, job's step)
    # The report behind the last mark: ticks (0.5 s) outpace reports (1 s), and a report
    # seen again is no news. Marking it again made half of a steady run's training look
    # like recovery in the effective training time.
    last_report: tuple[int, datetime | None] | None = None


class _Stop:
    """The first stop signal asks for a clean stop, any later one forces it. The handler
    only records: the run loop and the shutdown act on it, so no cleanup is cut off."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.forced = False

    def __call__(self, signum: int, _frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
        else:
            self.forced = True

    @contextlib.contextmanager
    def installed(self) -> Iterator[_Stop]:
        previous = {s: signal.signal(s, self) for s in STOP_SIGNALS}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


def stop_reason(checkpoint_step: int | None, checkpoint_files: bool) -> str:
    """Why an interrupted run ended, and whether the same command picks it up."""
    if checkpoint_step is not None:
        return f"stopped; run the same command again to resume from step {checkpoint_step}"
    if checkpoint_files:  # saved by a script that does not report its checkpoints
        return "stopped; run the same command again to resume from its checkpoint"
    return "stopped before any checkpoint was saved: nothing to resume, a rerun starts over"


def run(path: Path, opts: RunOptions, console: Console | None = None) -> Summary:
    with Display(console or Console(), every=opts.view_every) as display:
        return _run(path, opts, display)


def _run(path: Path, opts: RunOptions, display: Display) -> Summary:
    say = display.event
    name, spec = load_job(path, opts.replicas)
    host = devices.restrict(devices.host_gpus(), os.environ.get("CUDA_VISIBLE_DEVICES"))
    fit = fit_to_machine(spec, this_machine(len(host)), replicas_given=opts.replicas is not None)
    spec = fit.spec
    try:
        gpus = devices.allocate(spec.replicas, spec.resources.gpus, host)
    except devices.NotEnoughGpusError as exc:
        raise SpecError(f"{path}: {exc}") from None
    workdir = opts.workdir / name
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    stop = _Stop()
    with stop.installed():
        cluster = LocalCluster(name, spec, workdir, say, gpus)
        metrics = Metrics(workdir, name, opts.metrics_port, gpus)
        for note in fit.notes:
            say(f"[fit] {note}")
        say(
            f"running {name}: {spec.replicas} worker(s) x {spec.procs_per_node} process(es) "
            f"{gpus.note}; {_threads_note(spec)}; checkpoints in {cluster.checkpoints}; "
            f"logs in {workdir / 'logs'}"
        )
        started = time.monotonic()
        tally = _Tally()
        try:
            _drive(cluster, metrics, opts, tally, stop, display)
        finally:
            if stop.signum is not None:
                say(
                    f"stopping ({signal.Signals(stop.signum).name}): workers get "
                    f"{spec.termination_grace_period_seconds} s to save a checkpoint; "
                    f"press Ctrl-C again to kill them now"
                )
            cluster.shutdown(forced=lambda: stop.forced)
            energy = metrics.stop()
    st = cluster.status
    ended = time.monotonic()
    wall = ended - started
    # Succeeded or told to stop: what followed the last report was the final checkpoint
    # and the processes exiting. A failed run's tail was restarts that never reported.
    ettr = compute_ettr(
        tally.marks,
        start=started,
        end=ended,
        ended_by_last_mark=st.phase is Phase.SUCCEEDED or stop.signum is not None,
    )
    reports = cluster.last_reports()
    steps = max([(st.progress.step or 0) if st.progress else 0, *_ints(reports, rc.P_STEP)])
    checkpoints = _ints(reports, rc.P_CHECKPOINT_STEP)
    budget = spec.failure_policy.backoff_limit
    if st.progress is not None:
        # The last reports came after the last plan: the display's last line shows
        # what the summary below it says, not a step the workers trained past.
        last_loss = tally.losses[-1] if tally.losses else None
        final = _final_progress(st.progress, steps, max(checkpoints, default=None), last_loss)
        view = compute_view(st.model_copy(update={"progress": final}), budget, None)
        display.final(view)
    else:
        display.close()
    steps_run = max(0, steps - tally.first_step + 1) if tally.first_step is not None else 0
    interrupted = stop.signum is not None
    checkpoint_step = max(checkpoints) if checkpoints else None
    summary = Summary(
        phase="Interrupted" if interrupted else (st.phase.value if st.phase else "Unknown"),
        reason=stop_reason(checkpoint_step, cluster.has_checkpoints())
        if interrupted
        else (st.reason or ""),
        wall_seconds=wall,
        steps=steps,
        first_step=tally.first_step,
        steps_run=steps_run,
        checkpoint_step=checkpoint_step,
        first_loss=tally.losses[0] if tally.losses else None,
        last_loss=tally.losses[-1] if tally.losses else None,
        restarts=st.restarts,
        in_place_restarts=st.in_place_restarts,
        kills=tally.kills,
        effective_ratio=ettr.ratio,
        ettr=ettr.line(),
        ettr_seconds={
            "kept": ettr.kept,
            "startup": ettr.startup,
            "lost": ettr.lost,
            "recovery": ettr.recovery,
            "stalls": ettr.stalls,
            "shutdown": ettr.shutdown,
        },
        devices=gpus.note,
        energy_joules=energy,
        signal=stop.signum,
        last_failure=failure_line(st.last_failure) if st.last_failure else None,
    )
    (workdir / "summary.json").write_text(json.dumps(summary.__dict__, indent=2) + "\n")
    for line in summary.lines():
        say(line)
    return summary


def failure_line(failure: LastFailure) -> str:
    """status.lastFailure in one line: which pod, why, whether it spent the budget,
    and the launcher's root cause (OOMKilled, ENOSPC on the checkpoint volume...)."""
    exit_code = f"exit {failure.exit_code}, " if failure.exit_code is not None else ""
    charged = "counted" if failure.counted else "not counted"
    head = f"{failure.pod} {failure.reason} ({exit_code}{charged}, {failure.action})"
    return f"{head}: {failure.message}" if failure.message else head


def _final_progress(
    progress: Progress, step: int, checkpoint: int | None, loss: float | None
) -> Progress:
    total = progress.total_steps
    return progress.model_copy(
        update={
            "step": step,
            "summary": f"{step}/{total} ({100 * step // total}%)" if total else f"step {step}",
            "checkpoint_step": checkpoint if checkpoint is not None else progress.checkpoint_step,
            # The summary's last loss is the first one reported for the last step: a worker
            # that resumed at that step reports it again, with the loss its checkpoint held.
            "loss": loss if loss is not None else progress.loss,
        }
    )


def _ints(reports: list[dict[str, Any]], key: str) -> list[int]:
    return [r[key] for r in reports if isinstance(r.get(key), int)]


def _drive(
    cluster: LocalCluster,
    metrics: Metrics,
    opts: RunOptions,
    tally: _Tally,
    stop: _Stop,
    display: Display,
) -> None:
    """observe -> compute_plan -> act, every tick, until the job is over or told to stop."""
    say = display.event
    rng = random.Random(opts.seed)  # noqa: S311 (choosing chaos victims, not secrets)
    config = OperatorConfig()
    budget = cluster.spec.failure_policy.backoff_limit
    chaos = ChaosClock(seconds=opts.kill_every, steps=opts.kill_every_steps)
    resumed = False
    running_since: float | None = None
    while stop.signum is None:
        metrics.check(say)
        cluster.reap()
        cluster.act(compute_plan(cluster.observed(), utcnow(), config))
        _collect(cluster, tally)
        st = cluster.status
        if st.phase is not None and st.phase.finished and not cluster.running():
            return
        if tally.first_step is not None and not resumed:
            chaos.resumed(tally.first_step)
            resumed = True
            # Before the first step shows: said once, from what the workers loaded.
            reported = _ints(cluster.last_reports(), rc.P_CHECKPOINT_STEP)
            if note := resume_note(cluster.found_checkpoints, reported):
                say(note)
        now = time.monotonic()
        if st.phase is Phase.RUNNING and running_since is None:
            running_since = now
        if no_progress_note(running_since, now, tally.first_step):
            say(NO_PROGRESS)
            running_since = math.inf  # said once
        display.show(compute_view(st, budget, compute_rate(tally.marks)), now)
        step = st.progress.step if st.progress else None
        if st.phase is Phase.RUNNING and step is not None and chaos.due(now, step):
            victim = None
            if kills_left(tally.kills, st.restarts, budget) == 0:
                say(
                    f"[chaos] no more kills: {max(tally.kills, st.restarts)} of the restart "
                    f"budget of {budget} used, the last one is kept for a real failure "
                    f"(raise spec.failurePolicy.backoffLimit for more)"
                )
                chaos = ChaosClock()  # off for the rest of the run
            else:
                victim = cluster.kill_random_worker(rng)
            if victim:
                tally.kills += 1
                chaos.killed(step)
                say(f"[chaos] killed a worker process of {victim} at step {step}")
        time.sleep(opts.tick)


# A script that reports no progress trains in the dark: say so once, and how to fix it.
NO_PROGRESS_AFTER_SECONDS = 60.0
NO_PROGRESS = (
    f"no training progress reported after {NO_PROGRESS_AFTER_SECONDS:.0f} s of Running: the "
    "script may be training, but the step, loss, checkpoint and hang detection need it to "
    "report (trainop_runtime.progress.ProgressReporter; README, 'Your own training script')"
)


def no_progress_note(running_since: float | None, now: float, first_step: int | None) -> bool:
    """Whether to say NO_PROGRESS now: Running that long and not one step reported."""
    if running_since is None or first_step is not None:
        return False
    return now - running_since >= NO_PROGRESS_AFTER_SECONDS


def _collect(cluster: LocalCluster, tally: _Tally) -> None:
    progress = cluster.status.progress
    if progress is None or progress.step is None:
        return
    if tally.first_step is None:
        tally.first_step = progress.step
    if progress.step not in tally.seen_steps and progress.loss is not None:
        tally.losses.append(progress.loss)
    tally.seen_steps.add(progress.step)
    report = (progress.step, progress.update_time)
    if report == tally.last_report:
        return
    tally.last_report = report
    tally.marks.append((time.monotonic(), progress.step))


def _port_taken(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


class Metrics:
    """The job's metrics sidecar on 127.0.0.1: started, checked, read for energy, stopped.

    Its run dir is the runner's own: gpus.json names exactly the job's GPUs (a bare
    host's NVML shows every GPU to every worker) and progress.json links to worker 0's.
    """

    def __init__(self, workdir: Path, name: str, port: int, gpus: devices.Allocation) -> None:
        self.port, self.gpus = port, gpus
        self.url = f"http://127.0.0.1:{port}"
        run_dir = workdir / "run" / "metrics"
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / rc.GPUS_FILE).write_text(json.dumps({"uuids": sorted(gpus.uuids)}))
        progress = run_dir / rc.PROGRESS_FILE
        progress.unlink(missing_ok=True)
        progress.symlink_to(Path("..") / f"{name}-worker-0" / rc.PROGRESS_FILE)
        env = {
            **os.environ,
            rc.ENV_RUN_DIR: str(run_dir),
            rc.ENV_JOB_NAME: name,
            rc.ENV_JOB_NAMESPACE: "local",
            rc.ENV_POD_NAME: f"{name}-worker-0",
        }
        self.log_path = workdir / "logs" / "metrics-exporter.log"
        argv = [sys.executable, "-m", "trainop.exporter", "--address", "127.0.0.1"]
        with self.log_path.open("ab") as log:
            self.proc = _start([*argv, "--port", str(port)], env, log)
        self.up: bool | None = None  # None until it answered /healthz or exited
        self.first_scrape: str | None = None

    def _get(self, path: str, timeout: float) -> str | None:
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as resp:  # noqa: S310 (127.0.0.1)
                return str(resp.read().decode())
        except OSError:
            return None

    def check(self, say: Callable[[str], None]) -> None:
        """Once per tick until known: is it serving? The first answer is the energy baseline."""
        if self.up is not None:
            return
        if self.proc.poll() is not None:
            self.up = False
            why = (
                f"port {self.port} is already in use (another exporter, or an earlier run?)"
                if _port_taken(self.port)
                else f"it exited with {self.proc.returncode} (see {self.log_path})"
            )
            say(f"metrics: NOT served: {why}; training goes on. Pick a port: --metrics-port N")
        elif self._get("/healthz", timeout=0.5) is not None:
            self.up = True
            self.first_scrape = self._get("/metrics", timeout=5)
            say(f"metrics: {self.url}/metrics")

    def stop(self) -> float | None:
        """Stop the exporter; the job's GPU energy since the first scrape, if it was read."""
        energy = None
        if self.up and self.first_scrape is not None and self.gpus.on_gpu:
            last = self._get("/metrics", timeout=5)
            if last is not None:
                energy = energy_used(self.first_scrape, last, self.gpus.uuids)
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return energy

"""A job's pods as local processes: one store and N launcher agents on 127.0.0.1.

Tests and benchmarks use it to kill real workers, agents and stores the way a
cluster would, with the same entrypoints and env the operator gives pods.
Each agent gets its own run dir (a pod's emptyDir); all share one checkpoint
dir (the job's volume). Nothing here is mocked: these are real torchrun agents.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

from trainop_runtime import contract, zygote

T = TypeVar("T")

EXAMPLE_MODULE = "trainop_runtime.examples.tinylm"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(
    probe: Callable[[], T | None], *, timeout: float, what: str, interval: float = 0.05
) -> T:
    """Poll ``probe`` until it returns something other than None; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def first(items: Sequence[T]) -> T | None:
    """The first item or None: a probe for :func:`wait_for`."""
    return items[0] if items else None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Whole lines only: a line being appended right now is skipped until complete."""
    if not path.exists():
        return []
    out: list[dict[str, Any]] = []
    for line in path.read_text().splitlines(keepends=True):
        if line.endswith("\n"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def children_of(pid: int) -> list[int]:
    """Direct child pids, from /proc (Linux)."""
    kids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Field 4 is the ppid; the command name (field 2) may hold spaces, so split after ')'.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            kids.append(int(entry.name))
    return sorted(kids)


def descendants(pid: int) -> list[int]:
    out: list[int] = []
    frontier = [pid]
    while frontier:
        kids = children_of(frontier.pop())
        out += kids
        frontier += kids
    return out


def kill_tree(pid: int, sig: signal.Signals) -> None:
    """Signal ``pid`` and every descendant, parent first so it cannot spawn replacements."""
    tree = [pid, *descendants(pid)]  # before the kill: orphans are re-parented to init
    for p in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, sig)


@dataclass
class Agent:
    """One launcher process: a worker pod's main container."""

    name: str
    proc: subprocess.Popen[bytes]
    run_dir: Path
    log_path: Path
    termination_log: Path
    _log: IO[bytes] = field(repr=False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def workers(self) -> list[int]:
        """The pids running the training program (see worker_pids)."""
        return worker_pids(self.pid)

    def events(self) -> list[dict[str, Any]]:
        return read_jsonl(self.run_dir / contract.AGENT_EVENTS_FILE)

    def progress(self) -> dict[str, Any] | None:
        try:
            doc: dict[str, Any] = json.loads((self.run_dir / contract.PROGRESS_FILE).read_text())
        except (OSError, ValueError):
            return None
        return doc


def _cmdline(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


def worker_pids(agent_pid: int) -> list[int]:
    """The processes running the training program under one launcher agent: what
    the OOM killer or a crash takes down. With the zygote they are its forked
    children, not torchrun's (the clients that stand in for them)."""
    zygote_cmd = zygote.MODULE.encode()
    out = []
    for pid in children_of(agent_pid):
        cmd = _cmdline(pid)
        if not any(b"python" in part for part in cmd[:1]):
            continue
        if zygote_cmd in cmd:
            if b"serve" in cmd:
                out += children_of(pid)
            continue  # a client: its worker is the zygote's child
        out.append(pid)
    return sorted(out)


@dataclass
class JobSpec:
    nnodes: str = "1:2"
    nproc_per_node: int = 1
    max_restarts: int = 3
    grace_seconds: float = 30.0
    checkpoint_every_steps: int = 20
    # The operator's own rendezvous settings (contract.rdzv_conf), so tests and the bench
    # measure what a deployed job gets; only the last call is shorter (1 s, not 5 s), as
    # a job that sets spec.rendezvous.lastCallTimeoutSeconds: 1 would have it.
    rdzv_conf: str = contract.rdzv_conf(last_call_timeout=1)
    monitor_interval: float = 0.1
    program_args: tuple[str, ...] = ()
    extra_env: Mapping[str, str] = field(default_factory=dict)


class LocalJob:
    """Start/kill the processes of one job under ``workdir``; :meth:`close` cleans up."""

    def __init__(self, workdir: Path, spec: JobSpec, *, job_name: str = "local") -> None:
        self.workdir = workdir
        self.spec = spec
        self.job_name = job_name
        self.checkpoint_dir = workdir / "checkpoints"
        self.log_jsonl = workdir / "train.jsonl"
        self.store: subprocess.Popen[bytes] | None = None
        self.store_port = free_port()
        self.agents: dict[str, Agent] = {}
        self._retired: list[Agent] = []
        workdir.mkdir(parents=True, exist_ok=True)

    # --- processes

    def start_store(self) -> None:
        log = (self.workdir / "store.log").open("ab")
        self.store = subprocess.Popen(
            [sys.executable, "-m", contract.STORE_MODULE, "--port", str(self.store_port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self._base_env(),
        )
        log.close()
        wait_for(self._store_reachable, timeout=60, what="the store to listen")

    def kill_store(self) -> None:
        """The store pod lost with its node (SIGKILL); :meth:`start_store` brings it back
        on the same port, as a recreated pod behind the same Service."""
        if self.store is not None:
            self.store.kill()
            self.store.wait(timeout=30)

    def _store_reachable(self) -> bool | None:
        try:
            with socket.create_connection(("127.0.0.1", self.store_port), timeout=0.5):
                return True
        except OSError:
            return None

    def agent_env(self, name: str) -> dict[str, str]:
        s = self.spec
        run_dir = self.workdir / name
        env = self._base_env()
        env.update(
            {
                contract.PET_NNODES: s.nnodes,
                contract.PET_NPROC_PER_NODE: str(s.nproc_per_node),
                contract.PET_RDZV_BACKEND: contract.RDZV_BACKEND,
                contract.PET_RDZV_ENDPOINT: f"127.0.0.1:{self.store_port}",
                contract.PET_RDZV_ID: self.job_name,
                contract.PET_RDZV_CONF: s.rdzv_conf,
                contract.PET_MAX_RESTARTS: str(s.max_restarts),
                contract.PET_MONITOR_INTERVAL: str(s.monitor_interval),
                contract.ENV_JOB_NAME: self.job_name,
                contract.ENV_POD_NAME: name,
                contract.ENV_RUN_DIR: str(run_dir),
                contract.ENV_CHECKPOINT_DIR: str(self.checkpoint_dir),
                contract.ENV_CHECKPOINT_EVERY_STEPS: str(s.checkpoint_every_steps),
                contract.ENV_GRACE_SECONDS: str(s.grace_seconds),
                contract.ENV_ENTRY_MODULE: EXAMPLE_MODULE,
                contract.ENV_TERMINATION_LOG: str(run_dir / "termination-log"),
                # Pods have distinct addresses; here every "pod" is 127.0.0.1.
                "PET_LOCAL_ADDR": "127.0.0.1",
            }
        )
        env.update(s.extra_env)
        return env

    def start_agent(self, name: str) -> Agent:
        if name in self.agents:
            self._retired.append(self.agents.pop(name))
        env = self.agent_env(name)
        run_dir = Path(env[contract.ENV_RUN_DIR])
        run_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.workdir / f"{name}.log"
        log = log_path.open("ab")
        program = ["--log-jsonl", str(self.log_jsonl), *self.spec.program_args]
        proc = subprocess.Popen(
            [sys.executable, "-m", contract.LAUNCH_MODULE, "--", *program],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            # Own session: a test's kill of one "pod" never reaches the test runner.
            start_new_session=True,
        )
        agent = Agent(name, proc, run_dir, log_path, run_dir / "termination-log", log)
        self.agents[name] = agent
        return agent

    def kill_agent(self, name: str, sig: signal.Signals = signal.SIGKILL) -> None:
        """A pod lost with its node: the agent and all its workers die together.

        torchrun starts each worker in its own session, so a process-group kill
        would leave them running; a pod's cgroup takes the whole tree.
        """
        agent = self.agents[name]
        kill_tree(agent.pid, sig)
        agent.proc.wait(timeout=30)

    def close(self) -> None:
        agents = [*self.agents.values(), *self._retired]
        for a in agents:
            if a.proc.poll() is None:
                kill_tree(a.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                a.proc.wait(timeout=10)
            a._log.close()
        if self.store is not None and self.store.poll() is None:
            self.store.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.store.wait(timeout=10)
            if self.store.poll() is None:
                self.store.kill()

    def __enter__(self) -> LocalJob:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- observations

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        evs = read_jsonl(self.log_jsonl)
        return [e for e in evs if kind is None or e["event"] == kind]

    def last_step(self) -> int:
        steps = self.events("step")
        return int(steps[-1]["step"]) if steps else 0

    def wait_for_step(self, step: int, *, timeout: float) -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            reached = [e for e in self.events("step") if int(e["step"]) >= step]
            return reached[0] if reached else None

        return wait_for(probe, timeout=timeout, what=f"training to reach step {step}")

    def wait_for_start(self, after: float, *, timeout: float) -> dict[str, Any]:
        """The first worker-group start logged after wall time ``after``."""

        def probe() -> dict[str, Any] | None:
            starts = [e for e in self.events("start") if e["time"] > after]
            return starts[0] if starts else None

        return wait_for(probe, timeout=timeout, what="training to restart")

    def checkpoint_steps(self) -> list[int]:
        # Here, not at the top: `trainop run` imports this module for its process helpers,
        # and checkpoint imports torch (4 s of the runner's start-up on 2 cores).
        from trainop_runtime.checkpoint import CheckpointDir  # noqa: PLC0415

        return CheckpointDir(self.checkpoint_dir).steps()

    def _base_env(self) -> dict[str, str]:
        env = dict(os.environ)
        # Two cores shared by every "pod": one thread per worker avoids oversubscription.
        env.setdefault("OMP_NUM_THREADS", "1")
        env["PYTHONUNBUFFERED"] = "1"
        return env

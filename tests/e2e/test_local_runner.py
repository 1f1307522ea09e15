"""`trainop run`: the quickstart on this machine, with real torchrun processes."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from trainop import cli
from trainop.api.status import TrainingJobStatus
from trainop.core.build import build_store_pod, build_worker_pod
from trainop.core.config import OperatorConfig
from trainop.core.plan import compute_plan
from trainop.local import devices, oom
from trainop.local.runner import LocalCluster, LocalPod, failure_line, load_job, utcnow
from trainop_runtime import contract as rc
from trainop_runtime.localjob import free_port, read_jsonl

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "examples" / "quickstart.yaml"
README = ROOT / "README.md"
# Every process the runner starts inherits its env: this tells ours from anyone else's.
MARK = "TRAINOP_E2E_RUN"


def quickstart(tmp: Path, steps: int, *args: str, **spec: Any) -> Path:
    """The shipped quickstart, shortened for CI (same file, fewer steps)."""
    doc = yaml.safe_load(QUICKSTART.read_text())
    doc["spec"]["entrypoint"]["args"] = ["--steps", str(steps), *args]
    doc["spec"].update(spec)
    path = tmp / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def trainop_run(
    job: Path, workdir: Path, *extra: str, mark: str = "", port: int | None = None
) -> subprocess.Popen[str]:
    return trainop_run_argv([str(job), *extra], workdir, mark=mark, port=port)


def trainop_run_argv(
    argv: list[str], workdir: Path, *, mark: str = "", port: int | None = None
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "trainop.cli",
            "run",
            *argv,
            "--workdir",
            str(workdir),
            "--metrics-port",
            str(port or free_port()),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        start_new_session=True,
        env={**os.environ, MARK: mark},
    )


def processes_marked(mark: str) -> list[str]:
    """Live processes started by one runner (zombies have no environ to read)."""
    needle = f"{MARK}={mark}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                found.append(f"{entry.name}: {cmd[:120]}")
    return found


def no_process_left(mark: str, within: float) -> list[str]:
    deadline = time.monotonic() + within
    while (left := processes_marked(mark)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


def wait_for_step(progress: Path, step: int, proc: subprocess.Popen[str]) -> int:
    deadline = time.monotonic() + 240
    seen = 0
    while time.monotonic() < deadline and seen < step and proc.poll() is None:
        with contextlib.suppress(OSError, ValueError):
            seen = int(json.loads(progress.read_text()).get("step") or 0)
        time.sleep(0.5)
    assert seen >= step, "training never got going"
    return seen


def test_every_shipped_example_is_valid_for_the_runner_and_the_cluster() -> None:
    crd = yaml.safe_load((ROOT / "crds" / "trainop.dev_trainingjobs.yaml").read_text())
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        _, spec = load_job(path)
        assert spec.replicas >= 1, path
        doc = yaml.safe_load(path.read_text())
        assert doc["apiVersion"] == f"{crd['spec']['group']}/v1alpha1"
    # `trainop run` with no file runs the packaged copy: it must be the example, verbatim.
    packaged = ROOT / "operator" / "trainop" / "local" / "quickstart.yaml"
    assert packaged.read_text() == QUICKSTART.read_text()


FIX_HINT = (
    "fix the field(s) named above; `kubectl explain trainingjob.spec.<field>` describes each one"
)
# (spec changes, CLI flags) -> what the user reads on stderr ({path}: the file)
BAD_INPUT: dict[str, tuple[dict[str, Any], list[str], str]] = {
    "replicas above maxReplicas": (
        {"replicas": 9},
        [],
        "{path}: invalid TrainingJob: spec.replicas must be <= spec.maxReplicas\n" + FIX_HINT,
    ),
    "a misspelt field": (
        {"replica": 2},
        [],
        "{path}: invalid TrainingJob: spec.replica: unknown field; did you mean 'replicas'?\n"
        + FIX_HINT,
    ),
    "--replicas out of range": (
        {},
        ["--replicas", "9"],
        "--replicas 9: spec.replicas must be <= spec.maxReplicas; this job allows "
        "--replicas 1..3 (spec.minReplicas..spec.maxReplicas in {path})",
    ),
    "--replicas 0": (
        {},
        ["--replicas", "0"],
        "--replicas 0: spec.replicas: Input should be greater than or equal to 1; this job "
        "allows --replicas 1..3 (spec.minReplicas..spec.maxReplicas in {path})",
    ),
}


@pytest.mark.parametrize("case", BAD_INPUT, ids=list(BAD_INPUT))
def test_bad_input_says_which_field_and_how_to_fix_it_with_exit_code_2(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    changes, flags, message = BAD_INPUT[case]
    bad = quickstart(tmp_path, 10, **changes)
    code = cli.main(["run", str(bad), "--workdir", str(tmp_path / "w"), *flags])
    assert code == 2
    assert capsys.readouterr().err == "error: " + message.format(path=bad) + "\n"
    assert not (tmp_path / "w" / "quickstart" / "logs").exists(), "refused, yet it started"


def test_a_gpu_job_too_big_for_the_machine_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A one-GPU machine, as nvidia-smi -L would list it; the quickstart wants 2 x 1.
    monkeypatch.setattr(devices, "host_gpus", lambda: [devices.HostGpu(0, "GPU-0")])
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    job = quickstart(tmp_path, 10)
    code = cli.main(["run", str(job), "--workdir", str(tmp_path / "w")])
    assert code == 2
    assert capsys.readouterr().err == (
        f"error: {job}: 2 worker(s) x spec.resources.gpus 1 need 2 GPUs, this machine has 1: "
        "run fewer workers (--replicas 1)\n"
    )


@pytest.mark.torch
@pytest.mark.slow
def test_quickstart_survives_fault_injection_and_learns(tmp_path: Path) -> None:
    job = quickstart(tmp_path, 60, checkpoint={"everySteps": 10})
    # Kills by progress, not wall time: a fast machine must not finish before the
    # first kill, nor a slow one be killed again while still recovering.
    proc = trainop_run(job, tmp_path / "w", "--kill-every-steps", "20")
    out, _ = proc.communicate(timeout=480)
    assert proc.returncode == 0, out[-4000:]
    summary = json.loads((tmp_path / "w" / "quickstart" / "summary.json").read_text())
    assert summary["phase"] == "Succeeded"
    assert summary["steps"] == 60
    assert summary["kills"] >= 1, out[-3000:]
    # Each killed worker process was restarted in place by its agent, and that spent the
    # one budget as it would on a cluster.
    assert summary["restarts"] >= summary["in_place_restarts"] >= 1, out[-3000:]
    assert summary["last_loss"] < summary["first_loss"]
    assert 0 < summary["effective_ratio"] <= 1
    assert "on CPU: this machine has no GPU" in summary["devices"]
    assert "metrics: http://127.0.0.1:" in out
    assert "[chaos] killed a worker process" in out


@pytest.mark.torch
@pytest.mark.slow
def test_the_readmes_fault_injection_command_succeeds(tmp_path: Path) -> None:
    # The README's command as written (the built-in quickstart, no file argument); only
    # the work dir and metrics port differ, so the test neither reuses nor collides.
    command = re.search(r"`(\.venv/bin/trainop run --kill-every-steps \d+)`", README.read_text())
    assert command is not None, "the README no longer shows the fault-injection command"
    flags = command.group(1).split()[2:]
    proc = trainop_run_argv(flags, tmp_path / "w")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-4000:]
    summary = json.loads((tmp_path / "w" / "quickstart" / "summary.json").read_text())
    assert (summary["phase"], summary["steps"]) == ("Succeeded", 200)
    assert summary["kills"] >= 1, out[-3000:]
    assert summary["restarts"] < 5, "fault injection spent the last restart"
    # Kills cost recovery time: the ratio is below 1 and its parts say where time went.
    assert 0 < summary["effective_ratio"] < 1
    assert "(time in steps kept ÷ wall time)" in summary["ettr"]
    assert summary["ettr_seconds"]["recovery"] > 0
    assert sum(summary["ettr_seconds"].values()) == pytest.approx(summary["wall_seconds"])
    # The display's last line shows the step the summary reports.
    last_view = [line for line in out.splitlines() if " | step " in line][-1]
    assert f"step {summary['steps']}/200 " in last_view, last_view


@pytest.mark.torch
@pytest.mark.slow
def test_ctrl_c_checkpoints_and_the_same_command_resumes(tmp_path: Path) -> None:
    train_log = tmp_path / "train.jsonl"  # rank 0's own record of every step it trained
    # Far more steps than a Ctrl-C takes to land (tinylm does ~30 steps/s on an idle
    # machine), so the first run cannot simply finish before it stops.
    total = 400
    job = quickstart(
        tmp_path, total, "--log-jsonl", str(train_log), checkpoint={"everySteps": 100_000}
    )  # only the stop's save
    workdir = tmp_path / "w"
    proc = trainop_run(job, workdir)
    progress = workdir / "quickstart" / "run" / "quickstart-worker-0" / "progress.json"
    reached = wait_for_step(progress, 8, proc)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out[-3000:]
    first = json.loads((workdir / "quickstart" / "summary.json").read_text())
    assert first["phase"] == "Interrupted"
    saved = first["checkpoint_step"]
    assert saved is not None, "no checkpoint written on Ctrl-C"
    assert saved >= reached
    assert saved < total, "the first run finished before Ctrl-C: nothing left to resume"
    assert f"run the same command again to resume from step {saved}" in out, out[-3000:]
    first_run_end = max(e["time"] for e in read_jsonl(train_log))

    again = trainop_run(job, workdir)
    out, _ = again.communicate(timeout=300)
    assert again.returncode == 0, out[-3000:]
    second = json.loads((workdir / "quickstart" / "summary.json").read_text())
    assert second["steps"] == total
    # Announced before the display shows any step.
    lines = out.splitlines()
    announced = lines.index(f"resuming from checkpoint step {saved}")
    assert announced < min(i for i, line in enumerate(lines) if " | step " in line), out[-3000:]
    # Resumed from the Ctrl-C checkpoint: the first step it reports comes after it
    # (the first run's last report, were it read again, is exactly that step).
    assert second["first_step"] > saved, out[-3000:]
    assert 0 < second["steps_run"] <= total - saved
    rerun = [e for e in read_jsonl(train_log) if e["time"] > first_run_end]
    assert rerun[0]["event"] == "start"
    assert rerun[0]["resumed_step"] == saved
    assert min(e["step"] for e in rerun if e["event"] == "step") == saved + 1, "redid steps"


@pytest.mark.torch
@pytest.mark.slow
def test_the_own_script_example_trains_as_written_and_recovers(tmp_path: Path) -> None:
    """README, "Your own training script": the command as written, then with kills."""
    command = re.search(
        r"^(\.venv/bin/trainop run examples/own-script\.yaml)\s", README.read_text(), re.MULTILINE
    )
    assert command is not None, "the README no longer shows the own-script command"
    for run, extra in (("as-written", []), ("killed", ["--kill-every-steps", "25"])):
        workdir = tmp_path / run
        proc = trainop_run_argv([*command.group(1).split()[2:], *extra], workdir)
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out[-4000:]
        summary = json.loads((workdir / "own-script" / "summary.json").read_text())
        # 4 epochs of 1,200 rows over 2 workers, 32 rows each per step: 4 x 19 steps.
        assert (summary["phase"], summary["steps"]) == ("Succeeded", 76), summary
        assert summary["checkpoint_step"] == 76
        assert summary["last_loss"] < summary["first_loss"] / 10  # it learned the data
        if extra:
            assert summary["kills"] >= 1
            assert summary["restarts"] == summary["in_place_restarts"] >= 1


class Tmux:
    """A detached tmux session of a fixed size: a real terminal for `trainop run`, read
    back as the user sees it (capture-pane: the screen after every redraw)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def start(self, command: str, env: dict[str, str]) -> None:
        exports = " ".join(f"{k}={v}" for k, v in env.items())
        subprocess.run(
            ["tmux", "new-session", "-d", "-s", self.name, "-x", "120", "-y", "40",
             f"cd {ROOT} && env {exports} {command}; echo EXIT=$?; sleep 600"],
            check=True,
        )  # fmt: skip

    def screen(self) -> str:
        return subprocess.run(
            ["tmux", "capture-pane", "-p", "-J", "-t", self.name],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip

    def keys(self, *keys: str) -> None:
        subprocess.run(["tmux", "send-keys", "-t", self.name, *keys], check=True)

    def stop(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], check=False)

    def wait(self, what: str, ok: Any, timeout: float = 240) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ok(screen := self.screen()):
                return screen
            time.sleep(0.5)
        raise AssertionError(f"{what}: not on the screen after {timeout} s:\n{self.screen()}")


STEP_ON_SCREEN = re.compile(r"step (\d+)/400 ")
CKPT_ON_SCREEN = re.compile(r"ckpt @(\d+)")


@pytest.mark.torch
@pytest.mark.slow
def test_the_terminal_display_updates_in_place_and_announces_the_resume(tmp_path: Path) -> None:
    if shutil.which("tmux") is None:
        pytest.fail("tmux is missing: make setup installs it")
    mark = uuid.uuid4().hex
    job = quickstart(tmp_path, 400, checkpoint={"everySteps": 20})
    command = (
        f"{sys.executable} -m trainop.cli run {job} --workdir {tmp_path / 'w'} "
        f"--metrics-port {free_port()}"
    )
    env = {MARK: mark, "TERM": "xterm-256color", "COLUMNS": "120"}
    term = Tmux(f"trainop-e2e-{mark[:8]}")
    try:
        term.start(command, env)
        seen: list[tuple[int, int]] = []
        for at_least in (40, 80, 120):
            screen = term.wait(
                f"step {at_least}",
                lambda s, n=at_least: any(int(m) >= n for m in STEP_ON_SCREEN.findall(s)),
            )
            # In place: one progress line on the screen, however many steps went by.
            steps = STEP_ON_SCREEN.findall(screen)
            assert len(steps) == 1, screen
            ckpts = CKPT_ON_SCREEN.findall(screen)
            assert len(ckpts) == 1, screen
            seen.append((int(steps[0]), int(ckpts[0])))
        assert [s for s, _ in seen] == sorted(s for s, _ in seen)
        # The newest durable checkpoint: a multiple of everySteps, never going back.
        ckpts_seen = [k for _, k in seen]
        assert ckpts_seen == sorted(ckpts_seen), seen
        assert all(k % 20 == 0 and 0 < k <= s for s, k in seen), seen
        term.keys("C-c")  # checkpoints, then the same command resumes
        stopped = term.wait("the runner's exit", lambda s: "EXIT=" in s, timeout=120)
        assert "EXIT=130" in stopped, stopped
        term.stop()
        term.start(command, env)
        screen = term.wait("the resume", lambda s: STEP_ON_SCREEN.search(s) is not None)
        resumed = re.search(r"resuming from checkpoint step (\d+)", screen)
        assert resumed is not None, screen
        assert int(resumed.group(1)) >= seen[-1][0]  # the Ctrl-C checkpoint, not an older one
        # Announced above the live line, before any step of this run showed.
        assert screen.index(resumed.group(0)) < STEP_ON_SCREEN.search(screen).start(), screen
    finally:
        term.stop()
    assert no_process_left(mark, within=30) == []


def _pod_processes(mark: str, pod: str) -> list[int]:
    """Every live process of one local pod of one runner (its launcher, agent, workers)."""
    want = {f"{MARK}={mark}".encode(), f"{rc.ENV_POD_NAME}={pod}".encode()}
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if want <= set((entry / "environ").read_bytes().split(b"\0")):
                    found.append(int(entry.name))
    return found


@pytest.mark.torch
@pytest.mark.slow
def test_a_frozen_pod_is_stalled_then_restarted_as_a_hang_and_the_job_succeeds(
    tmp_path: Path,
) -> None:
    mark = uuid.uuid4().hex
    policy = {"backoffLimit": 5, "hangSeconds": 10, "restartOnHang": True}
    job = quickstart(
        tmp_path, 150, checkpoint={"everySteps": 10}, failurePolicy=policy,
        terminationGracePeriodSeconds=3,
    )  # fmt: skip
    workdir = tmp_path / "w"
    proc = trainop_run(job, workdir, mark=mark)
    progress = workdir / "quickstart" / "run" / "quickstart-worker-1" / "progress.json"
    wait_for_step(progress, 20, proc)
    # SIGSTOP every process of one pod, as a frozen node or a driver hang would: its
    # peer blocks in the next collective, and neither reports a step again.
    frozen = _pod_processes(mark, "quickstart-worker-1")
    assert frozen
    for pid in frozen:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, out[-4000:]
    summary = json.loads((workdir / "quickstart" / "summary.json").read_text())
    assert (summary["phase"], summary["steps"]) == ("Succeeded", 150)
    assert "made no training step" in out, out[-3000:]  # the Stalled warning, shown
    assert summary["restarts"] >= 1
    assert "Hang" in (summary["last_failure"] or ""), summary
    assert all(not Path(f"/proc/{pid}").exists() for pid in frozen)  # replaced, not thawed
    assert no_process_left(mark, within=10) == []


@pytest.mark.torch
@pytest.mark.slow
def test_sigterm_stops_everything_after_a_checkpoint(tmp_path: Path) -> None:
    mark = uuid.uuid4().hex
    job = quickstart(tmp_path, 400, checkpoint={"everySteps": 1000})
    workdir = tmp_path / "w"
    with socket.socket() as taken:  # someone else's server on the metrics port
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = trainop_run(job, workdir, mark=mark, port=port)
        progress = workdir / "quickstart" / "run" / "quickstart-worker-0" / "progress.json"
        reached = wait_for_step(progress, 5, proc)
        assert processes_marked(mark), "the marker does not reach the runner's children"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]
    summary = json.loads((workdir / "quickstart" / "summary.json").read_text())
    assert summary["phase"] == "Interrupted"
    assert summary["checkpoint_step"] >= reached
    assert no_process_left(mark, within=10) == []
    assert (
        f"metrics: NOT served: port {port} is already in use (another exporter, or an "
        "earlier run?); training goes on. Pick a port: --metrics-port N"
    ) in out
    assert f"metrics: http://127.0.0.1:{port}" not in out


@pytest.mark.torch
@pytest.mark.slow
def test_a_second_ctrl_c_kills_at_once_and_still_cleans_up(tmp_path: Path) -> None:
    mark = uuid.uuid4().hex
    # 40 s per step: a clean stop waits for the step in flight, so only the forced
    # one can end within seconds.
    job = quickstart(tmp_path, 400, "--step-sleep", "40")
    proc = trainop_run(job, tmp_path / "w", mark=mark)
    progress = tmp_path / "w" / "quickstart" / "run" / "quickstart-worker-0" / "progress.json"
    wait_for_step(progress, 1, proc)
    proc.send_signal(signal.SIGINT)
    time.sleep(2)
    forced_at = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    took = time.monotonic() - forced_at
    assert proc.returncode == 128 + signal.SIGINT, out[-3000:]
    assert took < 20, f"took {took:.0f} s after the second Ctrl-C"
    assert "stopping now: SIGKILL, no checkpoint" in out
    assert no_process_left(mark, within=10) == []


@pytest.mark.torch
@pytest.mark.slow
def test_children_do_not_outlive_a_killed_runner(tmp_path: Path) -> None:
    mark = uuid.uuid4().hex
    grace = 20
    job = quickstart(tmp_path, 400, terminationGracePeriodSeconds=grace)
    proc = trainop_run(job, tmp_path / "w", mark=mark)
    progress = tmp_path / "w" / "quickstart" / "run" / "quickstart-worker-0" / "progress.json"
    wait_for_step(progress, 3, proc)
    proc.kill()
    proc.communicate(timeout=30)
    # Each child got SIGTERM with the runner's death: workers may still save, within
    # the grace period, and then nothing of the job is left.
    assert no_process_left(mark, within=grace + 20) == []


@pytest.mark.torch
@pytest.mark.slow
def test_a_failed_pod_is_replaced_and_rejoins_the_running_job(tmp_path: Path) -> None:
    # With no in-place restarts allowed, a killed worker process fails its whole
    # agent (pod): the runner's policy replaces the pod, which must be able to join
    # the survivors' rendezvous (torch closes it on a failed agent's exit).
    job = quickstart(
        tmp_path,
        60,
        checkpoint={"everySteps": 10},
        rendezvous={"maxRestartsPerAgent": 0, "lastCallTimeoutSeconds": 1},
        failurePolicy={"backoffLimit": 5, "backoffSeconds": 0},
    )
    proc = trainop_run(job, tmp_path / "w", "--kill-every-steps", "20")
    out, _ = proc.communicate(timeout=480)
    assert proc.returncode == 0, out[-4000:]
    summary = json.loads((tmp_path / "w" / "quickstart" / "summary.json").read_text())
    assert summary["kills"] >= 1
    assert summary["restarts"] >= 1, "the killed worker's pod was never replaced"
    assert "RendezvousClosedError" not in out
    assert summary["steps"] == 60


def local_pod(
    cluster: LocalCluster,
    manifest: dict[str, Any],
    argv: list[str],
    oom_at_start: int | None = None,
) -> LocalPod:
    """A LocalPod as the runner holds one, its process a stand-in (sh or sleep, not torch)
    that finds its termination log in $TERMINATION_LOG."""
    run_dir = cluster.workdir / manifest["metadata"]["name"]
    run_dir.mkdir(parents=True)
    log = (run_dir / "log").open("ab")
    term_log = run_dir / "termination-log"
    env = {**os.environ, "TERMINATION_LOG": str(term_log)}
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
    return LocalPod(manifest, proc, run_dir, term_log, log, oom_at_start)


def plan_once(cluster: LocalCluster) -> Any:
    try:
        return compute_plan(cluster.observed(), utcnow(), OperatorConfig())
    finally:
        for pod in cluster.pods.values():
            pod.proc.kill()
            pod.proc.wait()
            pod.log.close()


def running_cluster(tmp: Path) -> LocalCluster:
    name, spec = load_job(QUICKSTART, replicas=1)
    cluster = LocalCluster(name, spec, tmp, print, devices.allocate(1, 0, []))
    cluster.status = TrainingJobStatus.model_validate({"phase": "Running"})
    return cluster


# which started first -> the worker's failure as the runner's policy classifies it
STORE_LOSS = {
    "store replaced after the worker started: free": ("worker", "RendezvousLost", 0),
    "the worker's own store still up: counted": ("store", "Error", 1),
}


@pytest.mark.parametrize("case", STORE_LOSS, ids=list(STORE_LOSS))
def test_the_runner_charges_a_lost_store_as_the_operator_does(case: str, tmp_path: Path) -> None:
    first, reason, restarts = STORE_LOSS[case]
    cluster = running_cluster(tmp_path)
    spec = cluster.spec
    # The worker's launcher exits as it does when its store is gone (EXIT_RENDEZVOUS_LOST).
    exit_lost = ["sh", "-c", f"exit {rc.EXIT_RENDEZVOUS_LOST}"]
    worker = (build_worker_pod(cluster.job, spec, 0, 0, OperatorConfig()), exit_lost)
    store = (build_store_pod(cluster.job, spec), ["sleep", "60"])
    order = [worker, store] if first == "worker" else [store, worker]
    for manifest, argv in order:
        cluster.pods[manifest["metadata"]["name"]] = local_pod(cluster, manifest, argv)
        time.sleep(0.01)  # distinct creation times, as two spawns always have
    cluster.pods[f"{cluster.name}-worker-0"].proc.wait(timeout=10)
    plan = plan_once(cluster)
    assert [f.reason for f in plan.failures] == [reason]
    assert plan.status.restarts == restarts


ENOSPC_REASON = (
    "worker rank 0 (pid 7) exited with 1: CheckpointError: checkpoint save failed: No space "
    "left on device (ENOSPC) in /ckpt: the checkpoint volume is full: free space or give it more"
)
# what the launcher stand-in does, the kernel's OOM count before it -> the summary's line
ROOT_CAUSES = {
    "a full checkpoint volume": (
        f"printf '%s' '{ENOSPC_REASON}' > $TERMINATION_LOG; exit 1",
        None,
        f"quickstart-worker-0 Error (exit 1, counted, RestartPod): {ENOSPC_REASON}",
    ),
    # A fake OOM: the SIGKILL is real, the kill count "before" is set one below now's.
    "the OOM killer": (
        "kill -9 $$",
        -1,
        "quickstart-worker-0 OOMKilled (exit 137, counted, RestartPod): "
        "the trainer ran out of memory",
    ),
}


@pytest.mark.parametrize("case", ROOT_CAUSES, ids=list(ROOT_CAUSES))
def test_the_root_cause_reaches_last_failure_and_the_summary(case: str, tmp_path: Path) -> None:
    script, oom_offset, line = ROOT_CAUSES[case]
    count = oom.oom_kill_count()
    if oom_offset is not None and count is None:
        pytest.skip("no readable OOM count here: every 137 is an Error")
    cluster = running_cluster(tmp_path)
    manifest = build_worker_pod(cluster.job, cluster.spec, 0, 0, OperatorConfig())
    before = count + oom_offset if count is not None and oom_offset is not None else None
    pod = local_pod(cluster, manifest, ["sh", "-c", script], oom_at_start=before)
    cluster.pods[pod.name] = pod
    pod.proc.wait(timeout=10)
    plan = plan_once(cluster)
    assert plan.status.last_failure is not None
    assert failure_line(plan.status.last_failure) == line

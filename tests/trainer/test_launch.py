"""The launcher's exit code and termination log, with real torchrun and workers."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from trainop_runtime import contract
from trainop_runtime.localjob import wait_for, worker_pids

pytestmark = pytest.mark.torch

TINY = ["--batch-size", "4", "--seq-len", "16", "--d-model", "16", "--n-heads", "2"]


def _launch(tmp_path: Path, *program: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        contract.PET_MAX_RESTARTS: "0",
        contract.PET_MONITOR_INTERVAL: "0.1",
        contract.ENV_RUN_DIR: str(tmp_path / "run"),
        contract.ENV_CHECKPOINT_DIR: str(tmp_path / "ckpt"),
        contract.ENV_TERMINATION_LOG: str(tmp_path / "termination-log"),
        "NVIDIA_VISIBLE_DEVICES": "GPU-11111111-2222-3333-4444-555555555555",
    }
    cmd = [sys.executable, "-m", contract.LAUNCH_MODULE, "--standalone"]
    cmd += ["--module", "trainop_runtime.examples.tinylm", "--", *program]
    return subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )


def test_a_python_error_exits_1_with_its_message(tmp_path: Path) -> None:
    proc = _launch(tmp_path, *TINY, "--n-heads", "3")  # 16 is not divisible by 3

    assert proc.wait(timeout=120) == 1
    reason = (tmp_path / "termination-log").read_text()
    assert reason.startswith("worker rank 0 (pid ")
    assert "divisible" in reason
    # The sidecar learns which GPUs this container sees, even without NVML.
    gpus = (tmp_path / "run" / contract.GPUS_FILE).read_text()
    assert "GPU-11111111-2222-3333-4444-555555555555" in gpus


def test_a_killed_worker_gives_its_signal_exit_code(tmp_path: Path) -> None:
    proc = _launch(tmp_path, *TINY, "--steps", "100000", "--step-sleep", "0.05")
    progress = tmp_path / "run" / contract.PROGRESS_FILE
    wait_for(lambda: progress.exists() or None, timeout=120, what="training to start")
    [worker] = worker_pids(proc.pid)

    os.kill(worker, signal.SIGKILL)  # what the OOM killer does

    assert proc.wait(timeout=60) == 137
    # torchrun names the pid it started: the zygote client that stood in for the worker.
    reason = (tmp_path / "termination-log").read_text().strip()
    assert re.fullmatch(r"worker rank 0 \(pid \d+\) was killed by SIGKILL \(exit 137\)", reason)

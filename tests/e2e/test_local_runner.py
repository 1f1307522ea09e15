"""`trainop run`: the quickstart on this machine, with real torchrun processes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from trainop.api.parse import parse_spec
from trainop.local.runner import SpecError, load_job
from trainop_runtime.localjob import free_port

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "examples" / "quickstart.yaml"


def quickstart(tmp: Path, steps: int, **spec: Any) -> Path:
    """The shipped quickstart, shortened for CI (same file, fewer steps)."""
    doc = yaml.safe_load(QUICKSTART.read_text())
    doc["spec"]["entrypoint"]["args"] = ["--steps", str(steps)]
    doc["spec"].update(spec)
    path = tmp / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def trainop_run(job: Path, workdir: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "trainop.cli",
            "run",
            str(job),
            "--workdir",
            str(workdir),
            "--metrics-port",
            str(free_port()),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        start_new_session=True,
    )


def test_every_shipped_example_is_valid_for_the_runner_and_the_cluster() -> None:
    crd = yaml.safe_load((ROOT / "crds" / "trainop.dev_trainingjobs.yaml").read_text())
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        _, spec = load_job(path)
        assert spec.replicas >= 1, path
        doc = yaml.safe_load(path.read_text())
        assert doc["apiVersion"] == f"{crd['spec']['group']}/v1alpha1"


def test_invalid_file_gets_the_operators_message_and_exit_code_2(tmp_path: Path) -> None:
    bad = quickstart(tmp_path, 10, replicas=9)  # maxReplicas is 3
    with pytest.raises(SpecError) as err:
        load_job(bad)
    _, operator_message = parse_spec(yaml.safe_load(bad.read_text())["spec"])
    assert operator_message is not None
    assert operator_message in str(err.value)
    proc = trainop_run(bad, tmp_path / "w")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "spec.replicas must be <= spec.maxReplicas" in out


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
    assert summary["last_loss"] < summary["first_loss"]
    assert "metrics: http://127.0.0.1:" in out
    assert "[chaos] killed a worker process" in out


@pytest.mark.torch
@pytest.mark.slow
def test_ctrl_c_checkpoints_and_the_same_command_resumes(tmp_path: Path) -> None:
    job = quickstart(tmp_path, 40, checkpoint={"everySteps": 1000})  # only the SIGTERM save
    workdir = tmp_path / "w"
    proc = trainop_run(job, workdir)
    progress = workdir / "quickstart" / "run" / "quickstart-worker-0" / "progress.json"
    deadline = time.monotonic() + 240
    step = 0
    while time.monotonic() < deadline and step < 8:
        with contextlib.suppress(OSError, ValueError):
            step = int(json.loads(progress.read_text()).get("step") or 0)
        time.sleep(0.5)
    assert step >= 8, "training never got going"
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out[-3000:]
    first = json.loads((workdir / "quickstart" / "summary.json").read_text())
    assert first["phase"] == "Interrupted"
    saved = sorted((workdir / "quickstart" / "checkpoints").iterdir())
    assert saved, "no checkpoint written on Ctrl-C"

    again = trainop_run(job, workdir)
    out, _ = again.communicate(timeout=300)
    assert again.returncode == 0, out[-3000:]
    second = json.loads((workdir / "quickstart" / "summary.json").read_text())
    assert second["steps"] == 40
    # Resumed, not restarted: its first loss is already below a fresh model's.
    assert second["first_loss"] < first["first_loss"]


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

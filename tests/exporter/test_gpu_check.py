"""bench/exporter/gpu_check.py, the real-GPU check, on a machine without a GPU.

The recording itself needs a GPU; what runs here is what decides its verdict
(tolerances, which checks fail) and its behaviour where it cannot run, so a
GPU session spends its time measuring, not debugging the script.
"""

from __future__ import annotations

import datetime
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from tests.exporter.helpers import Exposition, load_gpu_check
from trainop.exporter import names as n

gc = load_gpu_check()
UUID = "GPU-5e1ec7ed-0000-4000-8000-000000000000"
SMI_ROW = {"name": "NVIDIA H200", "driver_version": "570.86.15", "power_limit_watts": 700.0}


def window(
    *,
    exporter_w: float = 600.0,
    smi_w: float = 600.0,
    counter_w: float = 600.0,
    seconds: int = 60,
    gpu_up: float = 1.0,
    exported: tuple[str, ...] = (UUID,),
) -> list[Any]:
    """One sample a second: the exporter's power and energy counter against nvidia-smi."""
    return [
        gc.Sample(
            at=float(t),
            exporter={
                u: {"power_watts": exporter_w, "energy_joules": 1e6 + counter_w * t}
                for u in exported
            },
            plain={n.GPU_UP: gpu_up if t == seconds // 2 else 1.0, n.TRAINING_UP: 1.0},
            smi={UUID: {**SMI_ROW, "power_watts": smi_w}},
        )
        for t in range(seconds + 1)
    ]


@pytest.mark.parametrize(
    ("samples", "failed_scrapes", "failing"),
    [
        pytest.param(window(), 0, set(), id="agreeing readings pass"),
        pytest.param(window(exporter_w=625.0), 0, set(), id="power 4 % off: within 5 %"),
        pytest.param(window(exporter_w=640.0), 0, {f"{UUID} power"}, id="power 7 % off"),
        pytest.param(window(exporter_w=58.0, smi_w=50.0, counter_w=50.0), 0, set(), id="8 W idle"),
        pytest.param(window(counter_w=650.0), 0, set(), id="energy 8 % off: within 10 %"),
        pytest.param(window(counter_w=0.6), 0, {f"{UUID} energy"}, id="energy in kJ, not J"),
        pytest.param(window(gpu_up=0.0), 0, {f"{n.GPU_UP} is 1"}, id="gpu_up 0 once"),
        pytest.param(window(exported=()), 0, {"every GPU exported"}, id="GPU not exported"),
        pytest.param(window(), 2, {"no failed scrape"}, id="failed scrapes"),
        pytest.param(window()[:1], 0, {"enough samples"}, id="one sample"),
    ],
)
def test_verdict(samples: list[Any], failed_scrapes: int, failing: set[str]) -> None:
    checks = gc.assess(samples, failed_scrapes)
    assert {c.name for c in checks if not c.passed} == failing
    if not failing:
        assert {c.name for c in checks} >= {f"{UUID} power", f"{UUID} energy"}


def test_nvidia_smi_na_fields_are_none() -> None:
    rows = gc.parse_smi(f"{UUID}, NVIDIA H200, 570.86.15, [N/A], 700.00\n")
    assert rows == {UUID: {**SMI_ROW, "power_watts": None}}


def test_header_marks_a_real_recording_that_the_replay_test_recognises() -> None:
    when = datetime.datetime(2026, 12, 2, 5, 0, tzinfo=datetime.UTC)
    head = gc.header({UUID: {**SMI_ROW, "power_watts": 600.0}}, when)
    assert head.startswith(gc.HEADER_PREFIX)
    assert "1 x NVIDIA H200, driver 570.86.15, 2026-12-02T05:00:00Z" in head.splitlines()[0]
    assert all(line.startswith("# ") for line in head.splitlines())
    assert gc.fixture_name({UUID: SMI_ROW}) == "nvidia_h200_under_load.prom"
    # Comment lines: the exposition still parses with the header on top.
    assert Exposition(head + "trainop_gpu_up 1.0\n").value(n.GPU_UP) == 1


def test_without_a_gpu_it_exits_2_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    out = tmp_path / "out"
    assert gc.main(["--out", str(out)]) == gc.EXIT_CANNOT_RUN
    assert "no nvidia-smi on PATH" in capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert report["passed"] is False
    assert "nvidia-smi" in report["cannot_run"]


# Plays the trainer without CUDA: the same gpus.json and progress.json writers.
CPU_LOAD = """
import sys, time
from pathlib import Path
from trainop_runtime import contract
from trainop_runtime.progress import ProgressReporter
run_dir = Path(sys.argv[1])
(run_dir / contract.GPUS_FILE).write_text('{"uuids": ["@UUID@"]}')
reporter = ProgressReporter(run_dir / contract.PROGRESS_FILE, enabled=True, total_steps=None,
                            restarts=0, min_interval=0.2)
step = 0
while True:
    step += 1
    reporter.report(step=step, samples=step, loss=None, step_seconds=0.1, world_size=1,
                    checkpoint_step=None, checkpoint_time=None)
    time.sleep(0.1)
""".replace("@UUID@", UUID)


def test_exporter_that_cannot_see_the_gpu_fails_the_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The whole run, end to end, against a stand-in nvidia-smi: a mismatch exits 1."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\necho '{UUID}, NVIDIA H200, 570.86.15, 612.50, 700.00'\n")
    smi.chmod(smi.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(gc, "LOAD", CPU_LOAD)
    out = tmp_path / "out"

    # The real exporter with the real NVML: no driver here, so it exports no GPU.
    code = gc.main(["--out", str(out), "--warmup", "0", "--seconds", "3"])

    printed = capsys.readouterr().out
    assert code == gc.EXIT_MISMATCH, printed
    report = json.loads((out / "report.json").read_text())
    failed = {c["name"] for c in report["checks"] if not c["passed"]}
    assert failed == {f"{n.GPU_UP} is 1", "every GPU exported"}, printed
    assert "FAIL  every GPU exported" in printed
    recording = (out / "nvidia_h200_under_load.prom").read_text()
    assert recording.startswith(f"{gc.HEADER_PREFIX} 1 x NVIDIA H200, driver 570.86.15")
    assert Exposition(recording).value(n.TRAINING_UP) == 1

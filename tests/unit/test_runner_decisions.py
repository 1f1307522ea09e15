"""The local runner's pure decisions, as tables: which GPUs each worker gets, how much
energy the job's GPUs used, when a SIGKILL was the OOM killer. No processes here."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.exporter.helpers import gpus as fake_gpus
from tests.exporter.helpers import make_collector, scrape
from tests.factories import spec
from trainop.api.status import Progress, TrainingJobStatus
from trainop.exporter.fake_nvml import FakeNVML
from trainop.local.devices import (
    HostGpu,
    NotEnoughGpusError,
    allocate,
    parse_gpu_list,
    restrict,
)
from trainop.local.energy import energy_used
from trainop.local.fit import Machine, fit_to_machine
from trainop.local.oom import parse_oom_kills, termination_reason
from trainop.local.runner import (
    NO_PROGRESS,
    _collect,
    _Tally,
    load_job,
    local_threads,
    no_progress_note,
)
from trainop_runtime.ettr import compute_ettr

SMI = """\
GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-aaaaaaaa-0000-0000-0000-000000000000)
GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-bbbbbbbb-0000-0000-0000-000000000000)
  MIG 3g.40gb     Device  0: (UUID: MIG-cccccccc-0000-0000-0000-000000000000)
GPU 2: NVIDIA H100 80GB HBM3 (UUID: GPU-dddddddd-0000-0000-0000-000000000000)
"""


def host(n: int) -> list[HostGpu]:
    return [HostGpu(i, f"GPU-{i}") for i in range(n)]


def test_nvidia_smi_list_gives_whole_gpus_in_order() -> None:
    assert [(g.index, g.uuid[:12]) for g in parse_gpu_list(SMI)] == [
        (0, "GPU-aaaaaaaa"),
        (1, "GPU-bbbbbbbb"),
        (2, "GPU-dddddddd"),
    ]
    assert parse_gpu_list("NVIDIA-SMI has failed because it couldn't communicate") == []


# (replicas, gpus per worker, host GPUs) -> CUDA_VISIBLE_DEVICES per worker slot
ALLOCATIONS = {
    "one GPU each, no sharing": (2, 1, host(2), ["GPU-0", "GPU-1"]),
    "a slice of two each": (2, 2, host(4), ["GPU-0,GPU-1", "GPU-2,GPU-3"]),
    "spare GPUs stay unused": (1, 2, host(8), ["GPU-0,GPU-1"]),
    "GPU job, CPU-only machine: CPU": (2, 1, host(0), ["", ""]),
    "CPU job on a GPU machine sees no GPU": (2, 0, host(4), ["", ""]),
}


@pytest.mark.parametrize("case", ALLOCATIONS, ids=list(ALLOCATIONS))
def test_each_worker_gets_its_own_gpus(case: str) -> None:
    replicas, per_worker, machine, want = ALLOCATIONS[case]
    got = allocate(replicas, per_worker, machine)
    assert [got.visible_devices(slot) for slot in range(replicas)] == want
    assert got.on_gpu is any(want)
    assert ("on CPU" in got.note) is not any(want)


# (replicas, gpus per worker, host GPUs) -> what the refusal tells the user to do
TOO_FEW = {
    "two workers, one GPU": (
        2,
        1,
        1,
        "need 2 GPUs, this machine has 1: run fewer workers (--replicas 1)",
    ),
    "one worker wants more than the machine": (
        1,
        8,
        2,
        "need 8 GPUs, this machine has 2: lower spec.resources.gpus to 2 or less",
    ),
}


@pytest.mark.parametrize("case", TOO_FEW, ids=list(TOO_FEW))
def test_a_gpu_job_larger_than_the_machine_is_refused(case: str) -> None:
    replicas, per_worker, machine, message = TOO_FEW[case]
    with pytest.raises(NotEnoughGpusError) as err:
        allocate(replicas, per_worker, host(machine))
    assert message in str(err.value)


RESTRICT = {
    "unset: every GPU": (None, [0, 1, 2]),
    "indices": ("2,0", [0, 2]),
    "a UUID": ("GPU-1", [1]),
    "empty: none": ("", []),
}


@pytest.mark.parametrize("case", RESTRICT, ids=list(RESTRICT))
def test_a_users_cuda_visible_devices_limits_the_machine(case: str) -> None:
    visible, want = RESTRICT[case]
    assert [g.index for g in restrict(host(3), visible)] == want


def test_energy_is_the_increase_on_the_jobs_gpus_only(tmp_path: Path) -> None:
    # Exposition text from the exporter's collector over FakeNVML (fake GPUs): the
    # counters start far from zero, as NVML's count from driver load does.
    fake = FakeNVML(fake_gpus(3, energy_mj=5_000_000_000))
    collector = make_collector(tmp_path, fake, all_gpus=True)
    start = scrape(collector).text
    job, other, idle = (g.uuid for g in fake.gpus)
    fake.gpu(job).energy_mj += 1_500_000  # 1500 J
    fake.gpu(other).energy_mj += 9_000_000  # a neighbour's work, not the job's
    end = scrape(collector).text
    assert energy_used(start, end, {job}) == pytest.approx(1500.0)
    assert energy_used(start, end, {job, idle}) == pytest.approx(1500.0)
    assert energy_used(start, end, {"GPU-not-on-this-host"}) is None


COUNTER_CASES = {
    "steady": ({"GPU-a": 1000.0}, {"GPU-a": 1250.0}, 250.0),
    "two GPUs add up": ({"GPU-a": 10.0, "GPU-b": 20.0}, {"GPU-a": 15.0, "GPU-b": 30.0}, 15.0),
    "counter reset (driver reload) counts from zero": ({"GPU-a": 1000.0}, {"GPU-a": 40.0}, 40.0),
    "GPU missing at the start is not guessed": ({}, {"GPU-a": 40.0}, None),
}


def exposition(joules: dict[str, float]) -> str:
    lines = ["# TYPE trainop_gpu_energy_joules counter"]
    lines += [
        f'trainop_gpu_energy_joules_total{{gpu="0",gpu_uuid="{u}",model="x"}} {j}'
        for u, j in joules.items()
    ]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("case", COUNTER_CASES, ids=list(COUNTER_CASES))
def test_energy_counter_arithmetic(case: str) -> None:
    start, end, want = COUNTER_CASES[case]
    got = energy_used(exposition(start), exposition(end), {"GPU-a", "GPU-b"})
    assert got == (pytest.approx(want) if want is not None else None)


# (exit code, oom_kill count at spawn, at exit) -> the reason failure rules match on
REASONS = {
    "clean exit": (0, 3, 3, "Completed"),
    "SIGKILL while the cgroup counted an OOM kill": (137, 3, 4, "OOMKilled"),
    "SIGKILL with no OOM kill (chaos, kill -9)": (137, 3, 3, "Error"),
    "OOM kill, but the pod exited otherwise": (1, 3, 4, "Error"),
    "no cgroup count readable": (137, None, None, "Error"),
}


@pytest.mark.parametrize("case", REASONS, ids=list(REASONS))
def test_oom_kill_is_told_from_other_kills(case: str) -> None:
    code, before, after, want = REASONS[case]
    assert termination_reason(code, before, after) == want


OOM_FILES = {
    "cgroup v2 memory.events": ("low 0\nhigh 0\nmax 2\noom 1\noom_kill 1\n", 1),
    "cgroup v1 memory.oom_control": ("oom_kill_disable 0\nunder_oom 0\noom_kill 7\n", 7),
    "no count (old kernel)": ("oom_kill_disable 0\nunder_oom 0\n", None),
}


@pytest.mark.parametrize("case", OOM_FILES, ids=list(OOM_FILES))
def test_oom_kill_count_is_read_from_either_cgroup_version(case: str) -> None:
    text, want = OOM_FILES[case]
    assert parse_oom_kills(text) == want


# (spec overrides, this machine's cores) -> OMP_NUM_THREADS of each local worker process
LOCAL_THREADS: dict[str, tuple[dict[str, object], int, int]] = {
    "the quickstart on 2 cores: 2 workers x 1 process": (
        {"replicas": 2, "resources": {"gpus": 1}},
        2,
        1,
    ),
    "2 workers on 16 cores": ({"replicas": 2, "resources": {"gpus": 1}}, 16, 8),
    "processes per worker count too": ({"replicas": 2, "resources": {"gpus": 4}}, 16, 2),
    "more processes than cores: still 1": ({"replicas": 4, "resources": {"gpus": 8}}, 2, 1),
    "a pod's cpu request does not apply here": (
        {"replicas": 1, "resources": {"gpus": 1, "cpu": "64"}},
        4,
        4,
    ),
}


@pytest.mark.parametrize("case", LOCAL_THREADS, ids=list(LOCAL_THREADS))
def test_local_workers_share_this_machines_cores(case: str) -> None:
    overrides, cores, want = LOCAL_THREADS[case]
    assert local_threads(spec(**overrides), cores) == want


ROOT = Path(__file__).resolve().parents[2]
GB = 1024**3
LAPTOP = Machine(cores=2, memory_bytes=8 * GB, gpus=0)


def test_the_8_gpu_example_on_a_cpu_laptop_is_scaled_down_and_says_what_it_ignores() -> None:
    _, job = load_job(ROOT / "examples" / "llm-8xh100.yaml")
    fit = fit_to_machine(job, LAPTOP, replicas_given=False)
    # 2 processes on 2 cores, not 4 workers x 8 processes.
    assert (fit.spec.replicas, fit.spec.procs_per_node) == (2, 1)
    assert fit.notes == [
        "spec.replicas 4 -> 2: this machine has 2 core(s), one per worker process "
        "(--replicas N overrides, within 2..8)",
        "processes per worker 8 -> 1 (spec.resources.gpus, with no GPU to use here): "
        "2 worker(s) on 2 core(s)",
        "spec.resources.cpu 64 per worker is not reserved here: 2 worker(s) share this "
        "machine's 2 core(s)",
        "spec.resources.memory 800Gi per worker is not reserved here: 2 worker(s) share "
        "this machine's 8.0 GiB; one that runs out ends as OOMKilled",
        "ignored here, used on a cluster: checkpoint.volume, scheduling.schedulerName, "
        "scheduling.priorityClassName, scheduling.nodeSelector, scheduling.tolerations, "
        "scheduling.gang; checkpoints go to the work dir",
    ]


# (spec overrides, machine, --replicas given) -> (replicas, processes per worker, how
# each printed note starts)
FITS: dict[str, tuple[dict[str, Any], Machine, bool, tuple[int, int, list[str]]]] = {
    "the quickstart fits 2 cores as it is": (
        {"replicas": 2, "resources": {"gpus": 1}},
        LAPTOP,
        False,
        (2, 1, []),
    ),
    "workers never below minReplicas": (
        {"replicas": 3, "minReplicas": 3, "maxReplicas": 3, "resources": {"gpus": 1}},
        LAPTOP,
        False,
        (3, 1, ["3 worker process(es) (spec.minReplicas 3) share 2 core(s)"]),
    ),
    "--replicas is the user's word: only processes are cut": (
        {"replicas": 4, "resources": {"gpus": 2}},
        LAPTOP,
        True,
        (4, 1, ["processes per worker 2 -> 1", "4 worker process(es) (--replicas) share"]),
    ),
    "an explicit nprocPerNode is cut on CPU too": (
        {"replicas": 1, "nprocPerNode": 8, "resources": {"gpus": 0}},
        Machine(cores=4, memory_bytes=None, gpus=4),
        False,
        (1, 4, ["processes per worker 8 -> 4 (spec.nprocPerNode): 1 worker(s) on 4 core(s)"]),
    ),
    "a GPU run keeps its shape (allocate refuses what does not fit)": (
        {"replicas": 2, "resources": {"gpus": 4}},
        Machine(cores=2, memory_bytes=None, gpus=8),
        False,
        (2, 4, []),
    ),
    "requests within the machine say nothing": (
        {"replicas": 1, "resources": {"gpus": 1, "cpu": "2", "memory": "4Gi"}},
        LAPTOP,
        False,
        (1, 1, []),
    ),
}


@pytest.mark.parametrize("case", FITS, ids=list(FITS))
def test_a_job_is_fitted_to_this_machine_and_each_change_is_said(case: str) -> None:
    overrides, machine, given, (replicas, procs, notes) = FITS[case]
    fit = fit_to_machine(spec(**overrides), machine, replicas_given=given)
    assert (fit.spec.replicas, fit.spec.procs_per_node) == (replicas, procs)
    assert len(fit.notes) == len(notes), fit.notes
    for note, start in zip(fit.notes, notes, strict=True):
        assert note.startswith(start), note


def test_the_runner_marks_each_report_once_so_a_steady_run_is_all_training() -> None:
    """The runner ticks twice per trainer report. Its marks feed the effective training
    time: a report seen again must not mark a tick with no progress (that read as
    recovery: a clean 300-step run printed 21.5 %, recovery 36 s of 102 s)."""
    tally = _Tally()
    t0 = datetime(2026, 12, 3, tzinfo=UTC)
    # (tick, step, report time): 2 ticks per report; a restart reports step 8 again later.
    ticks = [(0, 4, 0), (1, 4, 0), (2, 6, 1), (3, 6, 1), (4, 8, 2), (5, 8, 2), (6, 8, 9)]
    for tick, step, at in ticks:
        progress = Progress(step=step, loss=1.0, update_time=t0 + timedelta(seconds=at))
        cluster = SimpleNamespace(status=TrainingJobStatus(progress=progress))
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr("trainop.local.runner.time.monotonic", lambda t=float(tick): t)
            _collect(cluster, tally)  # type: ignore[arg-type]
    assert tally.marks == [(0.0, 4), (2.0, 6), (4.0, 8), (6.0, 8)]
    ettr = compute_ettr(tally.marks, start=0.0, end=4.0)
    assert ettr.kept == 4.0  # steps 5-8, all of the time after the first mark
    assert ettr.recovery == 0.0


@pytest.mark.parametrize(
    ("running_since", "now", "first_step", "said"),
    [
        pytest.param(None, 500.0, None, False, id="never-running"),
        pytest.param(100.0, 159.0, None, False, id="running-59-s"),
        pytest.param(100.0, 160.0, None, True, id="running-60-s-no-report"),
        pytest.param(100.0, 500.0, 3, False, id="reports-progress"),
        pytest.param(math.inf, 500.0, None, False, id="already-said"),
    ],
)
def test_a_script_that_reports_no_progress_is_told_once_how_to(
    running_since: float | None, now: float, first_step: int | None, said: bool
) -> None:
    assert no_progress_note(running_since, now, first_step) is said
    assert "ProgressReporter" in NO_PROGRESS

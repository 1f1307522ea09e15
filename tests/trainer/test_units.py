"""Fast, pure tests of the runtime's decisions: no processes, no network."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import signal
from pathlib import Path

import pytest
import torch

from trainop_runtime import checkpoint, contract
from trainop_runtime._fs import temp_path
from trainop_runtime.checkpoint import (
    CheckpointDir,
    Checkpointer,
    CheckpointError,
    CheckpointPolicy,
    CorruptCheckpointError,
    checkpoint_name,
    decode,
    encode,
)
from trainop_runtime.distributed import attempt_prefix
from trainop_runtime.gpus import cuda_visible, uuids_from_env
from trainop_runtime.launch import (
    Entry,
    WorkerFailure,
    build_torchrun_args,
    describe_failure,
    error_file_message,
    merge_rdzv_conf,
    shutdown_timeout_for_grace,
)
from trainop_runtime.progress import ProgressReporter, report_restarts

TINYLM = Entry(module="trainop_runtime.examples.tinylm", script=None, args=("--steps", "5"))
POD_ENV = {
    contract.PET_NNODES: "1:4",
    contract.PET_NPROC_PER_NODE: "8",
    contract.PET_RDZV_BACKEND: "c10d",
    contract.PET_RDZV_ENDPOINT: "job-store:29400",
    contract.PET_RDZV_ID: "job-uid",
    contract.PET_MAX_RESTARTS: "5",
    contract.PET_MONITOR_INTERVAL: "0.1",
    contract.ENV_GRACE_SECONDS: "120",
}


# --- argv from env ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "entry", "standalone", "expected"),
    [
        pytest.param(
            POD_ENV,
            TINYLM,
            False,
            "--nnodes 1:4 --nproc-per-node 8 --rdzv-backend trainop-c10d"
            " --rdzv-endpoint job-store:29400 --rdzv-id job-uid --rdzv-conf is_host=false"
            " --max-restarts 5 --monitor-interval 0.1 --shutdown-timeout 108"
            " --module trainop_runtime.examples.tinylm --steps 5",
            id="operator-pod",
        ),
        pytest.param(
            {**POD_ENV, contract.PET_RDZV_CONF: "last_call_timeout=2,is_host=true"},
            TINYLM,
            False,
            "--nnodes 1:4 --nproc-per-node 8 --rdzv-backend trainop-c10d"
            " --rdzv-endpoint job-store:29400 --rdzv-id job-uid"
            " --rdzv-conf last_call_timeout=2,is_host=true"
            " --max-restarts 5 --monitor-interval 0.1 --shutdown-timeout 108"
            " --module trainop_runtime.examples.tinylm --steps 5",
            id="user-is_host-wins",
        ),
        pytest.param(
            {contract.PET_RDZV_ENDPOINT: "etcd:2379", contract.PET_RDZV_BACKEND: "etcd-v2"},
            Entry(module=None, script="/app/train.py", args=()),
            False,
            "--nnodes 1 --nproc-per-node 1 --rdzv-backend etcd-v2 --rdzv-endpoint etcd:2379"
            " --rdzv-id trainop --rdzv-conf is_host=false /app/train.py",
            id="other-backend-untouched-script",
        ),
        pytest.param(
            {contract.ENV_JOB_NAME: "demo"},
            TINYLM,
            True,
            "--nnodes 1 --nproc-per-node 1 --rdzv-backend trainop-c10d"
            " --rdzv-endpoint localhost:0 --rdzv-id demo"
            " --module trainop_runtime.examples.tinylm --steps 5",
            id="standalone",
        ),
    ],
)
def test_build_torchrun_args(
    env: dict[str, str], entry: Entry, standalone: bool, expected: str
) -> None:
    assert build_torchrun_args(env, entry, standalone=standalone) == expected.split()


def test_build_torchrun_args_needs_an_endpoint_and_an_entry() -> None:
    with pytest.raises(ValueError, match=contract.PET_RDZV_ENDPOINT):
        build_torchrun_args({}, TINYLM, standalone=False)
    with pytest.raises(ValueError, match="no entrypoint"):
        build_torchrun_args(POD_ENV, Entry(None, None), standalone=False)


@pytest.mark.parametrize(
    ("grace", "timeout"),
    [(30, 27), (120, 108), (600, 540), (2, 1), (0, 1)],
    ids=["default-pod", "two-minutes", "ten-minutes", "tiny", "zero"],
)
def test_shutdown_timeout_leaves_the_agent_a_margin(grace: float, timeout: int) -> None:
    assert shutdown_timeout_for_grace(grace) == timeout


@pytest.mark.parametrize(
    ("conf", "expected"),
    [
        ("", "is_host=false"),
        ("a=1", "a=1,is_host=false"),
        (" is_host = true , b=2", "is_host = true,b=2"),
    ],
)
def test_merge_rdzv_conf(conf: str, expected: str) -> None:
    assert merge_rdzv_conf(conf, {"is_host": "false"}) == expected


# --- exit code and reason ---------------------------------------------------------


def _failure(
    rank: int, exitcode: int, ts: float, *, message: str = "", error_file: bool = False
) -> WorkerFailure:
    return WorkerFailure(rank, exitcode, ts, 100 + rank, message, error_file)


@pytest.mark.parametrize(
    ("failures", "code", "reason"),
    [
        pytest.param(
            [_failure(0, 1, 10.0), _failure(3, -9, 10.0)],
            137,
            "worker rank 3 (pid 103) was killed by SIGKILL (exit 137)",
            id="oom-kill-beats-peer-crash-in-same-second",
        ),
        pytest.param(
            [_failure(2, 1, 5.0, message="Traceback\nValueError: bad lr", error_file=True)],
            1,
            "worker rank 2 (pid 102) exited with 1: ValueError: bad lr",
            id="python-error-with-message",
        ),
        pytest.param(
            [_failure(1, -15, 9.0), _failure(0, 3, 7.0)],
            3,
            "worker rank 0 (pid 100) exited with 3",
            id="earliest-wins",
        ),
        pytest.param([], 1, "worker group failed with no recorded failure", id="empty"),
    ],
)
def test_describe_failure(failures: list[WorkerFailure], code: int, reason: str) -> None:
    assert describe_failure(failures) == (code, reason)


# --- attempt prefix ------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "prefix"),
    [
        ({contract.ENV_ATTEMPT_ID: "abc", "GROUP_WORLD_SIZE": "4"}, "trainop/attempt/abc/"),
        ({"GROUP_WORLD_SIZE": "1", "TORCHELASTIC_RESTART_COUNT": "3"}, "trainop/restart/3/"),
        ({"GROUP_WORLD_SIZE": "2", "TORCHELASTIC_RESTART_COUNT": "3"}, None),
    ],
    ids=["launcher-agreed", "single-agent", "several-agents-no-agreement"],
)
def test_attempt_prefix(env: dict[str, str], prefix: str | None) -> None:
    assert attempt_prefix(env) == prefix


# --- gpus.json -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "uuids"),
    [
        ({"NVIDIA_VISIBLE_DEVICES": "GPU-a,GPU-b"}, ["GPU-a", "GPU-b"]),
        ({"NVIDIA_VISIBLE_DEVICES": "all", "CUDA_VISIBLE_DEVICES": "GPU-c"}, []),
        ({"CUDA_VISIBLE_DEVICES": "MIG-x, 1"}, ["MIG-x"]),
        ({}, []),
    ],
    ids=["uuids", "all-names-none", "cuda-fallback-skips-index", "nothing"],
)
def test_uuids_from_env(env: dict[str, str], uuids: list[str]) -> None:
    assert uuids_from_env(env) == uuids


NVML_SEES = ["GPU-aaaa-1", "GPU-bbbb-2", "GPU-cccc-3"]


@pytest.mark.parametrize(
    ("visible", "uuids"),
    [
        pytest.param(None, NVML_SEES, id="unset-all"),
        pytest.param("", [], id="empty-none"),
        pytest.param("2,0", ["GPU-cccc-3", "GPU-aaaa-1"], id="indices-in-cuda-order"),
        pytest.param("GPU-bbbb-2", ["GPU-bbbb-2"], id="uuid"),
        pytest.param("GPU-bbbb", ["GPU-bbbb-2"], id="uuid-prefix"),
        pytest.param("1,7,0", ["GPU-bbbb-2"], id="stops-at-first-invalid"),
        pytest.param("-1", [], id="minus-one-hides-all"),
    ],
)
def test_gpus_file_keeps_only_what_cuda_visible_devices_leaves(
    visible: str | None, uuids: list[str]
) -> None:
    env = {} if visible is None else {"CUDA_VISIBLE_DEVICES": visible}
    assert cuda_visible(NVML_SEES, env) == uuids


# --- checkpoints -------------------------------------------------------------------


def _state(step: int) -> dict[str, torch.Tensor]:
    return {"step": torch.tensor(step), "w": torch.full((4,), float(step))}


def test_resume_skips_torn_and_corrupt_checkpoints(tmp_path: Path) -> None:
    d = CheckpointDir(tmp_path, keep=10)
    for step in (10, 20, 30, 40):
        d.save(step, _state(step))
    good = (tmp_path / checkpoint_name(40)).read_bytes()
    (tmp_path / checkpoint_name(40)).write_bytes(good[: len(good) // 2])  # torn write
    corrupt = bytearray((tmp_path / checkpoint_name(30)).read_bytes())
    corrupt[-5] ^= 0xFF  # bit rot
    (tmp_path / checkpoint_name(30)).write_bytes(bytes(corrupt))
    (tmp_path / checkpoint_name(50)).write_bytes(b"")  # crashed before the first byte

    loaded = d.load_latest()

    assert loaded is not None
    assert loaded.step == 20
    assert torch.equal(loaded.state["w"], torch.full((4,), 20.0))


@pytest.mark.parametrize(
    "data",
    [b"", b"TRNOPCK1", b"NOTMAGIC\x00\x00\x00\x02{}", encode({"a": 1})[:-1]],
    ids=["empty", "header-only", "bad-magic", "truncated"],
)
def test_decode_rejects_damaged_files(data: bytes) -> None:
    with pytest.raises(CorruptCheckpointError):
        decode(data)


def test_no_checkpoint_means_fresh_start(tmp_path: Path) -> None:
    assert CheckpointDir(tmp_path / "absent").load_latest() is None


def test_saves_are_atomic_and_pruned(tmp_path: Path) -> None:
    d = CheckpointDir(tmp_path, keep=2)
    for step in range(1, 6):
        d.save(step, _state(step))
    assert d.steps() == [5, 4]
    assert not [p for p in tmp_path.iterdir() if ".tmp." in p.name]


def _temp(step: int, pid: int) -> str:
    """The temp file a writer with ``pid`` stages ``step`` in (see _fs.temp_path)."""
    return f".{checkpoint_name(step)}.tmp.{pid}"


OTHER_POD_PID = 7  # pods have their own pid namespaces: a small pid, alive or not here


@pytest.mark.parametrize(
    ("left", "is_writer", "in_flight", "action", "remaining"),
    [
        pytest.param(
            [_temp(20, OTHER_POD_PID)],
            True,
            None,
            "resume",
            [checkpoint_name(10)],
            id="killed-writer-removed-on-resume",
        ),
        pytest.param(
            [_temp(20, os.getpid())],
            True,
            None,
            "resume",
            [checkpoint_name(10)],
            id="own-pid-but-not-being-written-removed",
        ),
        pytest.param(
            [_temp(20, os.getpid())],
            True,
            _temp(20, os.getpid()),
            "resume",
            [checkpoint_name(10), _temp(20, os.getpid())],
            id="being-written-here-kept",
        ),
        pytest.param(
            [_temp(20, OTHER_POD_PID)],
            False,
            None,
            "resume",
            [checkpoint_name(10), _temp(20, OTHER_POD_PID)],
            id="reader-rank-deletes-nothing",
        ),
        pytest.param(
            [_temp(20, OTHER_POD_PID), _temp(25, OTHER_POD_PID + 1)],
            True,
            None,
            "save",
            [checkpoint_name(10), checkpoint_name(30)],
            id="removed-by-the-prune-after-a-save",
        ),
        pytest.param(
            [".progress.json.tmp.7", ".step_1.ckpt.tmp.7", "notes.txt"],
            True,
            None,
            "resume",
            [".progress.json.tmp.7", ".step_1.ckpt.tmp.7", checkpoint_name(10), "notes.txt"],
            id="other-files-untouched",
        ),
    ],
)
def test_temp_files_of_killed_writers_are_removed(
    tmp_path: Path,
    left: list[str],
    is_writer: bool,
    in_flight: str | None,
    action: str,
    remaining: list[str],
) -> None:
    d = CheckpointDir(tmp_path)
    d.save(10, _state(10))
    for name in left:  # a SIGKILL during a save leaves its temp file behind
        (tmp_path / name).write_bytes(b"half a checkpoint")
    ckpt = Checkpointer(d, CheckpointPolicy(), is_writer=is_writer)

    with contextlib.ExitStack() as stack:
        if in_flight is not None:  # an async save of this process, mid-write
            stack.enter_context(checkpoint._writing(tmp_path / in_flight))
        if action == "resume":
            loaded = ckpt.resume()
            assert loaded is not None
            assert loaded.step == 10
        else:
            ckpt.save_now(30, lambda: _state(30))

    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(remaining)


class _FailingDisk(CheckpointDir):
    """A checkpoint volume whose first ``failures`` writes fail (full, a network blip)."""

    def __init__(self, directory: Path, *, failures: int) -> None:
        super().__init__(directory)
        self.failures = failures

    def write(self, step: int, data: bytes) -> Path:
        if self.failures > 0:
            self.failures -= 1
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(step, data)


@pytest.mark.parametrize("final", [5, 7], ids=["same-step-as-the-failed-one", "a-later-step"])
def test_a_failed_async_save_does_not_block_the_sigterm_save(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, final: int
) -> None:
    disk = _FailingDisk(tmp_path, failures=1)
    ckpt = Checkpointer(disk, CheckpointPolicy(every_steps=5), is_writer=True)
    assert ckpt.maybe_save(5, lambda: _state(5))  # fails on the background thread

    with caplog.at_level(logging.ERROR, logger=checkpoint.__name__):
        ckpt.save_now(final, lambda: _state(final))

    assert (disk.steps(), ckpt.durable_step) == ([final], final)
    assert "earlier async checkpoint save failed" in caplog.text
    assert "No space left on device" in caplog.text


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_a_full_disk_is_named_with_its_fix(tmp_path: Path) -> None:
    # A real ENOSPC with no tiny filesystem to mount: the save's staging file is a
    # symlink to /dev/full, where every write fails as on a full volume.
    ckpt_dir = tmp_path / "ckpt"
    ckpt_dir.mkdir()
    temp_path(ckpt_dir / checkpoint_name(5)).symlink_to("/dev/full")
    ckpt = Checkpointer(CheckpointDir(ckpt_dir), CheckpointPolicy(), is_writer=True)
    with pytest.raises(CheckpointError) as err:
        ckpt.save_now(5, lambda: _state(5))
    assert str(err.value) == (
        f"checkpoint save failed: No space left on device (ENOSPC) in {ckpt_dir}: "
        "the checkpoint volume is full: free space or give it more"
    )
    assert CheckpointDir(ckpt_dir).steps() == []


class _FakeRefusingDisk(CheckpointDir):
    """A fake volume whose writes fail with one errno (no root-proof EACCES exists here)."""

    def __init__(self, directory: Path, code: int) -> None:
        super().__init__(directory)
        self.code = code

    def write(self, step: int, data: bytes) -> Path:
        raise OSError(self.code, os.strerror(self.code))


@pytest.mark.parametrize(
    ("code", "cause"),
    [
        pytest.param(
            errno.EACCES, "(EACCES) in {dir}: the trainer's user may not write", id="eacces"
        ),
        pytest.param(
            errno.EROFS, "(EROFS) in {dir}: the checkpoint volume is mounted read-only", id="erofs"
        ),
        pytest.param(errno.EDQUOT, "(EDQUOT) in {dir}: the checkpoint volume's quota", id="edquot"),
        pytest.param(errno.EIO, "Input/output error (EIO) in {dir}", id="other-errno-named"),
    ],
)
def test_a_failed_save_names_its_cause(tmp_path: Path, code: int, cause: str) -> None:
    ckpt = Checkpointer(_FakeRefusingDisk(tmp_path, code), CheckpointPolicy(), is_writer=True)
    with pytest.raises(CheckpointError, match="checkpoint save failed") as err:
        ckpt.save_now(5, lambda: _state(5))
    assert cause.format(dir=tmp_path) in str(err.value)


def test_the_root_cause_reaches_the_termination_log_whole() -> None:
    # What torch's @record leaves for a worker that died of a failed save.
    cause = "No space left on device (ENOSPC) in /checkpoints: the checkpoint volume is full"
    raw = {
        "message": f"CheckpointError: checkpoint save failed: {cause}",
        "extraInfo": {"py_callstack": "Traceback ...\n" * 50, "timestamp": "1"},
    }
    message = error_file_message(raw)
    _, reason = describe_failure([_failure(0, 1, 1.0, message=message, error_file=True)])
    assert reason == (
        f"worker rank 0 (pid 100) exited with 1: CheckpointError: checkpoint save failed: {cause}"
    )


def test_a_failed_final_save_is_raised(tmp_path: Path) -> None:
    ckpt = Checkpointer(_FailingDisk(tmp_path, failures=1), CheckpointPolicy(), is_writer=True)
    with pytest.raises(RuntimeError, match="checkpoint save failed"):
        ckpt.save_now(5, lambda: _state(5))


@pytest.mark.parametrize(
    ("policy", "step", "last_step", "elapsed", "due"),
    [
        (CheckpointPolicy(every_steps=10), 10, 0, 0.0, True),
        (CheckpointPolicy(every_steps=10), 9, 0, 1e6, False),
        (CheckpointPolicy(every_seconds=60), 1, 0, 61.0, True),
        (CheckpointPolicy(every_seconds=60), 5, 0, 59.0, False),
        (CheckpointPolicy(every_steps=100, every_seconds=60), 3, 0, 61.0, True),
        (CheckpointPolicy(every_steps=1), 7, 7, 0.0, False),
        (CheckpointPolicy(), 1000, 0, 1e6, False),
    ],
    ids=["steps", "steps-not-yet", "seconds", "seconds-not-yet", "either", "same-step", "off"],
)
def test_policy(
    policy: CheckpointPolicy, step: int, last_step: int, elapsed: float, due: bool
) -> None:
    assert policy.due(step=step, last_step=last_step, now=elapsed, last_time=0.0) is due


def test_policy_from_env() -> None:
    env = {contract.ENV_CHECKPOINT_EVERY_STEPS: "50", contract.ENV_CHECKPOINT_EVERY_SECONDS: "0"}
    assert CheckpointPolicy.from_env(env) == CheckpointPolicy(every_steps=50, every_seconds=None)


def test_checkpointer_async_save_then_resume(tmp_path: Path) -> None:
    now = [0.0]
    writer = Checkpointer(
        CheckpointDir(tmp_path),
        CheckpointPolicy(every_steps=5),
        is_writer=True,
        clock=lambda: now[0],
    )
    state = _state(0)
    for step in range(1, 13):
        state["w"].add_(1.0)  # training mutates in place while the save is in flight
        writer.maybe_save(step, lambda: state)
    writer.save_now(12, lambda: state)
    reader = Checkpointer(CheckpointDir(tmp_path), CheckpointPolicy(every_steps=5), is_writer=False)

    loaded = reader.resume()

    assert loaded is not None
    assert (loaded.step, CheckpointDir(tmp_path).steps()) == (12, [12, 10, 5])
    assert torch.equal(loaded.state["w"], torch.full((4,), 12.0))
    assert reader.durable_step == 12


# --- progress ------------------------------------------------------------------------


def test_progress_is_rate_limited_and_has_contract_keys(tmp_path: Path) -> None:
    now = [100.0]
    rep = ProgressReporter(
        tmp_path / contract.PROGRESS_FILE,
        enabled=True,
        total_steps=50,
        restarts=2,
        clock=lambda: now[0],
    )

    def report(step: int) -> bool:
        return rep.report(
            step=step,
            samples=10 * step,
            loss=2.5,
            step_seconds=0.1,
            world_size=4,
            checkpoint_step=None,
            checkpoint_time=None,
        )

    assert report(1)
    now[0] += 0.5
    assert not report(2)
    now[0] += 0.5
    assert report(3)

    doc = json.loads((tmp_path / contract.PROGRESS_FILE).read_text())

    assert doc == {
        contract.P_STEP: 3,
        contract.P_TOTAL_STEPS: 50,
        contract.P_SAMPLES: 30,
        contract.P_LOSS: 2.5,
        contract.P_STEP_SECONDS: 0.1,
        contract.P_SAMPLES_PER_SECOND: 20.0,
        contract.P_RESTARTS: 2,
        contract.P_WORLD_SIZE: 4,
        contract.P_TIME: 101.0,
    }


def test_only_local_rank_zero_reports(tmp_path: Path) -> None:
    env = {contract.ENV_RUN_DIR: str(tmp_path), "LOCAL_RANK": "1"}
    rep = ProgressReporter.from_env(env, total_steps=None)
    assert not rep.report(
        step=1,
        samples=1,
        loss=None,
        step_seconds=None,
        world_size=1,
        checkpoint_step=None,
        checkpoint_time=None,
        force=True,
    )
    assert not (tmp_path / contract.PROGRESS_FILE).exists()


def test_exit_codes_follow_the_shell_convention() -> None:
    from trainop_runtime.launch import exit_code_of

    assert [exit_code_of(c) for c in (-signal.SIGKILL, -signal.SIGTERM, 1, 300)] == [
        137,
        143,
        1,
        255,
    ]


@pytest.mark.parametrize(
    ("env", "before", "after"),
    [
        ({"TORCHELASTIC_RESTART_COUNT": "3"}, None, {contract.P_RESTARTS: 3}),
        (
            {"TORCHELASTIC_RESTART_COUNT": "3"},
            {contract.P_STEP: 40, contract.P_RESTARTS: 2, contract.P_TIME: 5.0},
            {contract.P_STEP: 40, contract.P_RESTARTS: 3, contract.P_TIME: 5.0},
        ),
        ({"TORCHELASTIC_RESTART_COUNT": "0"}, None, None),
        ({"TORCHELASTIC_RESTART_COUNT": "3", "LOCAL_RANK": "1"}, None, None),
        ({"TORCHELASTIC_RESTART_COUNT": "x"}, None, None),
        ({"TORCHELASTIC_RESTART_COUNT": "1"}, "torn{", {contract.P_RESTARTS: 1}),
    ],
    ids=["first-restart", "keeps-last-report", "no-restart", "not-local-rank-0", "junk", "torn"],
)
def test_report_restarts(
    tmp_path: Path, env: dict[str, str], before: object, after: dict[str, object] | None
) -> None:
    """The launcher's worker client records the agent's restart count for any script."""
    path = tmp_path / contract.PROGRESS_FILE
    if before is not None:
        path.write_text(before if isinstance(before, str) else json.dumps(before))
    report_restarts({contract.ENV_RUN_DIR: str(tmp_path), **env})
    if after is None:
        assert not path.exists()
    else:
        assert json.loads(path.read_text()) == after


@pytest.mark.parametrize(
    ("max_nodes", "poll"),
    [(1, 0.05), (2, 0.05), (8, 0.08), (50, 0.5), (100, 1.0), (1000, 1.0)],
)
def test_agents_read_torchs_rendezvous_state_sooner_in_small_groups(
    monkeypatch: pytest.MonkeyPatch, max_nodes: int, poll: float
) -> None:
    """torch's own rendezvous state holder and executor, on a fake clock and a fake
    backend: a waiting agent sleeps the shortened poll between reads instead of torch's
    second, and a monitoring agent's read is fresh after one poll (a survivor sees a
    waiting replacement that much sooner) but still served from cache within it."""
    from datetime import timedelta
    from types import SimpleNamespace

    from torch.distributed.elastic.rendezvous import dynamic_rendezvous as dr
    from torch.distributed.elastic.rendezvous import utils as rdzv_utils

    from trainop_runtime import rendezvous

    monkeypatch.setattr(dr, "_delay", dr._delay)  # restored after the test
    slept: list[float] = []
    monkeypatch.setattr(rdzv_utils, "time", SimpleNamespace(sleep=slept.append))
    clock = [100.0]
    monkeypatch.setattr(dr, "time", SimpleNamespace(monotonic=lambda: clock[0]))

    class Backend:  # counts the reads that reach the store
        name = "fake"
        reads = 0

        def get_state(self) -> None:
            self.reads += 1

    settings = dr.RendezvousSettings(
        "run", 1, max_nodes, dr.RendezvousTimeout(), timedelta(seconds=5), 3
    )
    backend = Backend()
    holder = dr._BackendRendezvousStateHolder(backend, settings)  # type: ignore[arg-type]
    assert rendezvous.shorten_poll(SimpleNamespace(_state_holder=holder), max_nodes)  # type: ignore[arg-type]

    holder.sync()
    clock[0] += poll / 2
    holder.sync()
    assert backend.reads == 1  # within one poll: the cache
    clock[0] += poll / 2 + 0.001
    holder.sync()
    assert backend.reads == 2  # after one poll: the store

    node = dr._NodeDescGenerator().generate("127.0.0.1")
    executor = dr._DistributedRendezvousOpExecutor(node, holder, settings)
    actions = iter([dr._Action.SYNC, dr._Action.SYNC, dr._Action.FINISH])
    executor.run(lambda ctx, deadline: next(actions), deadline=float("inf"))
    assert slept == [poll, poll]
    # The CAS back-off (a range, not the poll) is torch's as before.
    dr._delay(seconds=(0.5, 0.5))
    assert slept == [poll, poll, 0.5]

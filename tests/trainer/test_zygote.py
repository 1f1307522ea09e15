"""The zygote with real processes: a server that imported torch forks workers for
clients, and each client behaves, to torchrun, exactly like the worker would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procs import stop_group
from trainop_runtime import zygote
from trainop_runtime.launch import Entry, zygote_entry
from trainop_runtime.localjob import children_of, wait_for

pytestmark = pytest.mark.torch

# The program each test's worker runs: reports what it sees, then does what argv says.
PROGRAM = """
import json, os, signal, sys, time
what = sys.argv[1]
if what == "sleep":
    # Before the report line: a test signals as soon as it reads that line. os.write, not
    # print: the signal may land while the report's print is still inside the buffered
    # writer, and a print from the handler then raises "reentrant call" (exit 1, seen
    # under load in CI).
    signal.signal(signal.SIGTERM, lambda *_: (os.write(1, b"saved on SIGTERM\\n"), sys.exit(0)))
print(json.dumps({"argv": sys.argv[1:], "cwd": os.getcwd(), "x": os.environ.get("X"),
                  "pid": os.getpid(), "torch": "torch" in sys.modules}), flush=True)
if what == "exit":
    sys.exit(int(sys.argv[2]))
if what == "signal":
    os.kill(os.getpid(), int(sys.argv[2]))
if what == "raise":
    raise RuntimeError("boom from the worker")
if what in ("raise-while-saving", "peer-lost-while-saving"):
    import atexit, threading
    atexit.register(lambda: print("atexit ran", flush=True))
    def save():
        time.sleep(0.5)
        with open(sys.argv[2], "w") as f:
            f.write("saved")
    threading.Thread(target=save).start()  # not a daemon: an async checkpoint
    if what == "peer-lost-while-saving":
        raise RuntimeError("[pair.cc:545] Read error [10.0.0.7]:41235: Connection reset by peer")
    raise RuntimeError("boom while saving")
if what == "sleep":
    time.sleep(600)
"""


@pytest.fixture
def server_proc(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    """A zygote serving at a short socket path (Unix paths are limited to 108 bytes)."""
    sock = Path(f"/tmp/tz-{os.getpid()}-{time.monotonic_ns()}.sock")
    proc = subprocess.Popen(
        [sys.executable, "-m", zygote.MODULE, "serve", str(sock)],
        stderr=(tmp_path / "zygote.log").open("wb"),
        start_new_session=True,
    )
    wait_for(lambda: sock.exists() or None, timeout=30, what="the zygote's socket")
    yield sock, proc
    stop_group(proc, grace=0)  # it ignores SIGTERM, by design; the launcher SIGKILLs it
    sock.unlink(missing_ok=True)


@pytest.fixture
def server(server_proc: tuple[Path, subprocess.Popen[bytes]]) -> Path:
    return server_proc[0]


def client(tmp_path: Path, sock: Path | None, *args: str) -> subprocess.Popen[str]:
    script = tmp_path / "program.py"
    script.write_text(PROGRAM)
    program = zygote.Program(None, str(script), args)
    env = {**os.environ, "X": "from-the-client"}
    env.pop(zygote.ENV_SOCKET, None)
    if sock is not None:
        env[zygote.ENV_SOCKET] = str(sock)
    return subprocess.Popen(
        zygote.client_argv(sys.executable, program),
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # as torchrun starts workers
    )


def report(proc: subprocess.Popen[str]) -> dict[str, object]:
    assert proc.stdout is not None
    doc: dict[str, object] = json.loads(proc.stdout.readline())
    return doc


def test_worker_is_forked_with_the_clients_env_cwd_and_args(tmp_path: Path, server: Path) -> None:
    proc = client(tmp_path, server, "exit", "0")
    seen = report(proc)
    assert proc.wait(timeout=60) == 0
    assert seen["argv"] == ["exit", "0"]
    assert seen["cwd"] == str(tmp_path)
    assert seen["x"] == "from-the-client"
    assert seen["pid"] != proc.pid  # a fork of the zygote, not the client
    assert seen["torch"] is True  # already imported: the point of the zygote


@pytest.mark.parametrize(
    ("args", "returncode"),
    [
        (("exit", "3"), 3),
        (("signal", str(int(signal.SIGKILL))), -signal.SIGKILL),  # the OOM killer
        (("signal", str(int(signal.SIGSEGV))), -signal.SIGSEGV),
        (("raise",), 1),
    ],
)
def test_client_exits_the_way_the_worker_did(
    tmp_path: Path, server: Path, args: tuple[str, ...], returncode: int
) -> None:
    proc = client(tmp_path, server, *args)
    assert proc.wait(timeout=60) == returncode
    if args[0] == "raise":
        assert proc.stderr is not None
        assert "RuntimeError: boom from the worker" in proc.stderr.read()


def test_a_failed_worker_skips_teardown_but_not_its_checkpoint_thread_or_atexit(
    tmp_path: Path, server: Path
) -> None:
    """A forked worker that raises leaves without the interpreter's teardown (which
    held a broken process group's worker for 1.3 s: bench/recovery), yet an async
    checkpoint still being written completes, atexit handlers run and the traceback
    reaches the log, with exit code 1, as a plain Python exit would have it."""
    saved = tmp_path / "ckpt"
    proc = client(tmp_path, server, "raise-while-saving", str(saved))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert saved.read_text() == "saved"
    assert "atexit ran" in out
    assert "RuntimeError: boom while saving" in err


@pytest.mark.parametrize(("stop", "returncode"), [(True, 128 + signal.SIGTERM), (False, 1)])
def test_a_worker_that_lost_a_peer_waits_for_its_agent_to_stop_it(
    tmp_path: Path, server: Path, stop: bool, returncode: int
) -> None:
    """A collective broken by a peer's death: the worker waits for its agent's SIGTERM
    (the peer rejoining: a membership restart, not a failure of its own) and leaves as
    stopped; with no SIGTERM (the peer's pod is gone for good) it leaves failed after
    the grace. Either way its checkpoint thread finishes first."""
    saved = tmp_path / "ckpt"
    proc = client(tmp_path, server, "peer-lost-while-saving", str(saved))
    assert proc.stderr is not None
    if stop:
        # The traceback is printed before the wait: the agent's SIGTERM lands in it.
        for line in proc.stderr:
            if "Connection reset by peer" in line:
                break
        proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert proc.returncode == returncode
    assert saved.read_text() == "saved"


def test_sigterm_to_the_client_reaches_the_worker(tmp_path: Path, server: Path) -> None:
    proc = client(tmp_path, server, "sleep")
    report(proc)
    os.killpg(proc.pid, signal.SIGTERM)  # torchrun's stop
    assert proc.wait(timeout=30) == 0
    assert proc.stdout is not None
    assert "saved on SIGTERM" in proc.stdout.read()


def test_a_stop_signal_to_the_launchers_group_spares_the_zygote(
    tmp_path: Path, server_proc: tuple[Path, subprocess.Popen[bytes]]
) -> None:
    # Ctrl-C or a SIGTERM to the pod's process group hits the zygote too; the
    # workers it forked must still be able to save and report their exit.
    sock, zproc = server_proc
    proc = client(tmp_path, sock, "sleep")
    report(proc)
    os.killpg(zproc.pid, signal.SIGTERM)
    os.killpg(zproc.pid, signal.SIGINT)
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert proc.stdout is not None
    assert "saved on SIGTERM" in proc.stdout.read()
    assert zproc.poll() is None


def test_a_lost_zygote_leaves_the_worker_running_to_its_end(
    tmp_path: Path, server_proc: tuple[Path, subprocess.Popen[bytes]]
) -> None:
    sock, zproc = server_proc
    proc = client(tmp_path, sock, "sleep")
    worker = int(str(report(proc)["pid"]))
    zproc.kill()
    zproc.wait()
    time.sleep(0.5)
    assert proc.poll() is None, "the client must wait for its worker"
    os.kill(worker, signal.SIGTERM)  # the worker saves and exits 0 ...
    assert proc.wait(timeout=30) == 1  # ... but its status went with the zygote
    assert proc.stdout is not None
    assert "saved on SIGTERM" in proc.stdout.read()


def test_worker_dies_with_its_client(tmp_path: Path, server: Path) -> None:
    proc = client(tmp_path, server, "sleep")
    worker = int(str(report(proc)["pid"]))
    os.killpg(proc.pid, signal.SIGKILL)  # torchrun's last resort; the worker is elsewhere
    proc.wait(timeout=10)

    def gone() -> bool | None:
        return True if not Path(f"/proc/{worker}").exists() else None

    wait_for(gone, timeout=10, what="the orphaned worker to die")


def test_without_a_zygote_the_client_execs_the_worker_itself(tmp_path: Path) -> None:
    proc = client(tmp_path, tmp_path / "no-such.sock", "exit", "4")
    seen = report(proc)
    assert proc.wait(timeout=60) == 4
    assert seen["pid"] == proc.pid  # exec: the client became the worker
    assert seen["x"] == "from-the-client"


def test_zygote_exits_when_its_launcher_does(tmp_path: Path) -> None:
    # A shell stands in for the launcher: it starts the zygote, then dies.
    sock = Path(f"/tmp/tz-{os.getpid()}-orphan.sock")
    launcher = subprocess.Popen(
        ["sh", "-c", f'"{sys.executable}" -m {zygote.MODULE} serve {sock} & sleep 600'],
        start_new_session=True,
    )
    wait_for(lambda: sock.exists() or None, timeout=30, what="the zygote's socket")
    [server] = [p for p in children_of(launcher.pid) if p != launcher.pid and _is_zygote(p)]
    launcher.kill()
    launcher.wait()
    wait_for(lambda: True if not _alive(server) else None, timeout=60, what="the zygote to exit")
    sock.unlink(missing_ok=True)


def _is_zygote(pid: int) -> bool:
    return b"serve" in Path(f"/proc/{pid}/cmdline").read_bytes()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        (
            Entry("pkg.train", None, ("--lr", "1")),
            ["py", "-m", zygote.MODULE, "run", "--module", "pkg.train", "--", "--lr", "1"],
        ),
        (
            Entry(None, "/app/train.py", ()),
            ["py", "-m", zygote.MODULE, "run", "--script", "/app/train.py", "--"],
        ),
        (Entry(None, None, ("/bin/trainer", "--x"), no_python=True), None),  # not Python
    ],
)
def test_zygote_entry(entry: Entry, expected: list[str] | None) -> None:
    forked = zygote_entry(entry, "py")
    if expected is None:
        assert forked is None
    else:
        assert forked == Entry(None, None, tuple(expected), no_python=True)


@pytest.mark.parametrize(
    ("env", "on", "extra"),
    [
        ({}, True, []),
        ({zygote.ENV_ENABLED: "0"}, False, []),
        ({zygote.ENV_ENABLED: "false"}, False, []),
        ({zygote.ENV_PRELOAD: "transformers, torch, numpy"}, True, ["transformers", "numpy"]),
    ],
)
def test_settings_from_env(env: dict[str, str], on: bool, extra: list[str]) -> None:
    assert zygote.enabled(env) is on
    assert zygote.preload_modules(env) == [*zygote.PRELOAD, *extra]


@pytest.mark.parametrize(
    ("exc", "peer"),
    [
        (
            RuntimeError(
                "[gloo/transport/tcp/pair.cc:545] Read error [10.0.0.7]:41235: "
                "Connection reset by peer"
            ),
            True,
        ),
        (RuntimeError("NCCL error: remote process exited or there was a network error"), True),
        ("DistNetworkError", True),
        (RuntimeError("boom from the training loop"), False),
        ("OutOfMemoryError", False),
    ],
)
def test_a_failure_caused_by_a_lost_peer_is_told_from_a_root_cause(
    exc: BaseException | str, peer: bool
) -> None:
    """A worker that failed because a peer died waits for its agent to see the peer
    rejoin, so the budget is charged once (the plain-script fault-tolerance test counts
    it exactly); a root cause leaves at once."""
    import torch
    import torch.distributed

    if isinstance(exc, str):
        cls = getattr(torch.distributed, exc, None) or getattr(torch, exc)
        exc = cls("what the backend said")
    assert zygote.lost_a_peer(exc) == peer

"""Pre-imported workers: torchrun's restarts without paying ``import torch`` again.

Every in-place restart makes torchrun start fresh Python processes, and each one
imports torch before it can rendezvous: 2 s on a workstation, 6 s on this project's
2-core CI machine, most of a recovery. So each pod's launcher also starts a *zygote*
server that imports torch once (and nothing that touches CUDA) and waits on a Unix
socket; torchrun's worker command becomes a tiny client that asks the zygote to
fork a worker for it:

    torchrun -> client (python -m trainop_runtime.zygote run --module M -- ARGS)
                  \\-- socket: env, cwd, stdin/stdout/stderr, a lifeline pipe
    zygote   -> fork -> worker (the client's env and fds; runs M as __main__)

To torchrun the client *is* the worker: it forwards signals to the real worker
and exits the way the worker did (the same code, or the same signal), so exit codes
and the operator's failure rules see the real cause. The worker dies with its
client (the lifeline pipe reaches EOF), so torchrun's SIGKILL of the client's
process group still ends it. If there is no zygote (disabled, crashed, not ready
to fork), the client simply ``exec``s the worker the ordinary way.

Forking after ``import torch`` is safe because nothing has initialized CUDA or
started torch's thread pools yet (``DataLoader`` workers fork a torch process the
same way); the server refuses to serve if a preloaded module initialized CUDA.
Set ``TRAINOP_ZYGOTE=0`` to turn it off; ``TRAINOP_ZYGOTE_PRELOAD`` adds modules.

This module is the client too, so it imports only the standard library at the top.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import importlib
import json
import os
import runpy
import selectors
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Final, NoReturn

from trainop_runtime import progress  # standard library only, like this module

MODULE: Final = "trainop_runtime.zygote"
ENV_SOCKET: Final = "TRAINOP_ZYGOTE_SOCKET"  # set by the launcher for its workers
ENV_ENABLED: Final = "TRAINOP_ZYGOTE"  # "0" turns the zygote off
ENV_PRELOAD: Final = "TRAINOP_ZYGOTE_PRELOAD"  # extra modules, comma-separated
# torch._dynamo: DDP's constructor imports it, and it costs as much as torch itself
# (3.5 s vs 4.3 s on the CI machine). None of these initializes CUDA or starts threads.
PRELOAD: Final = (
    "torch",
    "torch.distributed",
    "torch.nn.parallel",
    "torch.optim",
    "torch._dynamo",
)

_HEADER = struct.Struct("!I")
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
_PARENT_POLL_SECONDS = 1.0
_REQUEST_TIMEOUT_SECONDS = 10.0


def _say(message: str) -> None:
    """One line to stderr: the pod's log, next to the agent's."""
    sys.stderr.write(f"trainop zygote: {message}\n")
    sys.stderr.flush()


@dataclass(frozen=True)
class Program:
    """What a worker runs: ``python -m module ARGS`` or ``python script ARGS``."""

    module: str | None
    script: str | None
    args: tuple[str, ...]

    def python_argv(self) -> list[str]:
        target = ["-m", self.module] if self.module else [str(self.script)]
        return ["-u", *target, *self.args]


def enabled(env: Mapping[str, str]) -> bool:
    return env.get(ENV_ENABLED, "1").strip().lower() not in ("0", "false", "no", "off")


def preload_modules(env: Mapping[str, str]) -> list[str]:
    extra = [m.strip() for m in env.get(ENV_PRELOAD, "").split(",") if m.strip()]
    return [*PRELOAD, *(m for m in extra if m not in PRELOAD)]


def client_argv(python: str, program: Program) -> list[str]:
    """The command torchrun runs (``--no-python``) for each worker. Pure."""
    which = ["--module", program.module] if program.module else ["--script", str(program.script)]
    return [python, "-m", MODULE, "run", *which, "--", *program.args]


# --- client ---------------------------------------------------------------------------


def _exec_directly(program: Program) -> int:
    os.execv(sys.executable, [sys.executable, *program.python_argv()])  # noqa: S606 (same program torchrun would run)


def _send_request(sock: socket.socket, program: Program, lifeline: int) -> None:
    body = json.dumps(
        {
            "module": program.module,
            "script": program.script,
            "args": list(program.args),
            "env": dict(os.environ),
            "cwd": str(Path.cwd()),
        }
    ).encode()
    socket.send_fds(sock, [_HEADER.pack(len(body))], [0, 1, 2, lifeline])
    sock.sendall(body)


def _read_line(reader: Any) -> dict[str, Any] | None:
    try:
        line = reader.readline()
    except OSError:
        return None
    if not line:
        return None
    doc: dict[str, Any] = json.loads(line)
    return doc


def run_client(program: Program) -> int:
    # Before the program: its first report, if it ever writes one, comes later.
    progress.report_restarts(os.environ)
    path = os.environ.get(ENV_SOCKET, "")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lifeline_r, lifeline_w = os.pipe()  # the worker's end reaches EOF when we die
    try:
        sock.connect(path)
        _send_request(sock, program, lifeline_r)
    except OSError:
        sock.close()
        return _exec_directly(program)
    os.close(lifeline_r)
    reader = sock.makefile("rb")
    forked = _read_line(reader)
    if forked is None:  # the zygote died before forking: nothing ran yet
        sock.close()
        os.close(lifeline_w)
        return _exec_directly(program)
    pid = int(forked["pid"])

    def forward(signum: int, frame: FrameType | None) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    for sig in _FORWARDED:
        signal.signal(sig, forward)
    ended = _read_line(reader)
    if ended is None:
        # Lost the zygote (killed): the worker runs on, maybe saving a checkpoint;
        # wait for it, but its exit status went with the zygote.
        _say(f"lost the server; waiting for worker {pid}, whose exit status is unknown")
        _wait_for_exit(pid)
        return 1
    code = int(ended["returncode"])
    if code < 0:  # die of the same signal, so torchrun reports it as such
        with contextlib.suppress(OSError, ValueError):  # SIGKILL/SIGSTOP cannot be handled
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
        time.sleep(1)  # a signal that does not kill by default (ignored, stopped)
        return 128 - code
    return code


def _wait_for_exit(pid: int) -> None:
    """Block until a process that is not our child exits."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    with selectors.DefaultSelector() as sel:
        sel.register(pidfd, selectors.EVENT_READ)
        sel.select()
    os.close(pidfd)


# --- server ---------------------------------------------------------------------------


@dataclass
class _Request:
    program: Program
    env: dict[str, str]
    cwd: str
    fds: list[int]  # stdin, stdout, stderr, lifeline


def _recv_exactly(conn: socket.socket, n: int) -> bytes:
    chunks = []
    while n:
        chunk = conn.recv(n)
        if not chunk:
            raise ConnectionError("client went away mid-request")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _receive(conn: socket.socket) -> _Request | None:
    fds: list[int] = []
    try:
        header, fds, _, _ = socket.recv_fds(conn, _HEADER.size, 4)
        if len(header) != _HEADER.size or len(fds) != 4:
            raise ConnectionError("malformed request")
        doc = json.loads(_recv_exactly(conn, _HEADER.unpack(header)[0]))
        program = Program(doc["module"], doc["script"], tuple(doc["args"]))
        return _Request(program, dict(doc["env"]), str(doc["cwd"]), list(fds))
    except (OSError, ValueError, KeyError, ConnectionError) as e:
        for fd in fds:
            os.close(fd)
        _say(f"bad request: {e}")
        return None


def _can_watch_children() -> bool:
    try:
        os.close(os.pidfd_open(os.getpid()))
    except (AttributeError, OSError):
        return False
    return True


def _cuda_initialized() -> bool:
    torch = sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_initialized())


def serve(path: str, preload: Sequence[str]) -> _Request | None:
    """Serve fork requests until the launcher goes away.

    Returns None in the server, and the request in each forked worker, which then
    runs it from the top of the stack (see main), so the program's exceptions and
    exit code behave as in ``python -m``.
    """
    parent = os.getppid()
    # A stop signal sent to the launcher's whole process group (Ctrl-C, the local
    # runner's SIGTERM) must not take us down while our workers save their final
    # checkpoint: we exit when the launcher does, and it kills us once they are done.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    Path(path).unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    # Listening before the imports: early clients queue instead of falling back.
    listener.listen(64)
    if not _can_watch_children():
        _say("this kernel has no pidfd_open (Linux < 5.3): workers start the ordinary way")
        listener.close()
        return None
    started = time.monotonic()
    for name in preload:
        try:
            importlib.import_module(name)
        except Exception as e:  # a worker importing it will fail and say why
            _say(f"cannot preload {name}: {e}")
    if _cuda_initialized():
        _say(
            "a preloaded module initialized CUDA, which a fork would break: "
            "workers start the ordinary way"
        )
        listener.close()
        Path(path).unlink(missing_ok=True)
        return None
    _say(f"ready in {time.monotonic() - started:.1f} s (preloaded {', '.join(preload)})")
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, None)
    while os.getppid() == parent:
        for key, _ in sel.select(timeout=_PARENT_POLL_SECONDS):
            if key.data is None:
                request = _accept(listener, sel)
                if request is not None:
                    return request  # in the forked worker
            else:
                _reap(sel, key)
    return None


def _accept(listener: socket.socket, sel: selectors.BaseSelector) -> _Request | None:
    conn, _ = listener.accept()
    # One server serves every worker of the pod: a client that connects and then
    # stalls must not hold up the others for long.
    conn.settimeout(_REQUEST_TIMEOUT_SECONDS)
    request = _receive(conn)
    conn.settimeout(None)
    if request is None:
        conn.close()
        return None
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        # The worker: drop every server resource, then become the program.
        for key in list(sel.get_map().values()):
            if isinstance(key.data, tuple):
                key.data[1].close()
                os.close(key.fd)
        sel.close()
        listener.close()
        conn.close()
        return request
    for fd in request.fds:
        os.close(fd)
    pidfd = os.pidfd_open(pid)
    sel.register(pidfd, selectors.EVENT_READ, (pid, conn))
    with contextlib.suppress(OSError):
        conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
    return None


def _reap(sel: selectors.BaseSelector, key: selectors.SelectorKey) -> None:
    pid, conn = key.data
    _, status = os.waitpid(pid, 0)
    with contextlib.suppress(OSError):
        conn.sendall(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}).encode() + b"\n")
    conn.close()
    sel.unregister(key.fd)
    os.close(key.fd)


# --- the forked worker ----------------------------------------------------------------


def _die_with_client(lifeline: int) -> None:
    """Block until the client's end of the pipe closes, then die like it did."""
    with contextlib.suppress(OSError):
        while os.read(lifeline, 1):
            pass
    os.kill(os.getpid(), signal.SIGKILL)


def become(request: _Request) -> None:
    """Turn this forked process into the worker the client asked for."""
    os.setsid()  # like torchrun's own workers: a signal to the zygote's group spares it
    stdin, stdout, stderr, lifeline = request.fds
    for target, fd in ((0, stdin), (1, stdout), (2, stderr)):
        os.dup2(fd, target)
        os.close(fd)
    threading.Thread(target=_die_with_client, args=(lifeline,), daemon=True).start()
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # -u, as torchrun runs Python workers: logs reach the pod's log as they happen.
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 (lives as long as the process)
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    os.chdir(request.cwd)
    os.environ.clear()
    os.environ.update(request.env)
    for entry in reversed(request.env.get("PYTHONPATH", "").split(os.pathsep)):
        if entry and entry not in sys.path:
            sys.path.insert(1, entry)
    threads = request.env.get("OMP_NUM_THREADS", "")
    torch = sys.modules.get("torch")
    if torch is not None and threads.isdigit() and int(threads) > 0:
        # libgomp read OMP_NUM_THREADS when the zygote imported torch; apply the worker's.
        torch.set_num_threads(int(threads))
    program = request.program
    if program.module:
        sys.path[0] = request.cwd
        sys.argv = [program.module, *program.args]
        runpy.run_module(program.module, run_name="__main__", alter_sys=True)
    else:
        script = Path(str(program.script)).absolute()
        sys.path[0] = str(script.parent)
        sys.argv = [str(script), *program.args]
        runpy.run_path(str(script), run_name="__main__")


# How long a worker whose collective broke because a peer died waits for its agent
# to stop it (see _leave_failed). The agent learns of a rejoining peer in under 0.5 s
# on an idle 2-core machine (bench/recovery); the margin is for a loaded one.
PEER_LOST_GRACE_SECONDS: Final = 1.0
# What a worker raises when a peer's death broke a collective (gloo, NCCL).
_PEER_LOST_SIGNS: Final = (
    "Connection reset by peer",
    "Connection closed by peer",
    "ncclRemoteError",
    "remote process exited",
)


def lost_a_peer(exc: BaseException) -> bool:
    """Whether a worker failed only because another one did."""
    dist = sys.modules.get("torch.distributed")
    dist_error = getattr(dist, "DistError", None)
    if isinstance(dist_error, type) and isinstance(exc, dist_error):
        return True
    return any(sign in str(exc) for sign in _PEER_LOST_SIGNS)


def _leave_failed(exc: Exception) -> NoReturn:
    """End a failed worker without the interpreter's teardown.

    Finalizing a broken process group's objects held a failed worker's exit by 1.3 s
    with gloo (bench/recovery trace, 2026-12-03; NCCL's can hang far longer), and its
    agent restarts the group only once it sees the exit. What Python's own exit does
    that matters still happens, in its order: the traceback is printed, non-daemon
    threads (an async checkpoint being written) finish, atexit handlers run, the
    streams are flushed; the exit code is 1.

    A worker that failed only because a peer died first waits, up to
    PEER_LOST_GRACE_SECONDS, for its agent's SIGTERM: the peer's agent rejoining makes
    this agent restart the group as a membership change, which is not charged to the
    budget; leaving at once would make it a failure of its own, charging one failure
    twice. With no SIGTERM (the peer's pod is lost: nobody rejoins) it leaves failed;
    with one, it leaves as stopped (128 + SIGTERM), its checkpoint thread done.
    """
    lost = lost_a_peer(exc)
    stopped: list[int] = []
    if lost:
        # Before anything else: the agent's SIGTERM may come at any moment now; it is
        # noted, not fatal (whichever thread the kernel hands it to).
        signal.signal(signal.SIGTERM, lambda signum, frame: stopped.append(signum))
    traceback.print_exc()
    code = 1
    if lost:
        deadline = time.monotonic() + PEER_LOST_GRACE_SECONDS
        while not stopped and time.monotonic() < deadline:
            time.sleep(0.01)  # the handler runs between sleeps
        code = 128 + signal.SIGTERM if stopped else 1
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


# --- command line ---------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=MODULE, description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    srv = sub.add_parser("serve", help="the zygote: preload, then fork workers on request")
    srv.add_argument("socket")
    cli = sub.add_parser("run", help="one worker, forked by the zygote at $" + ENV_SOCKET)
    which = cli.add_mutually_exclusive_group(required=True)
    which.add_argument("--module")
    which.add_argument("--script")
    cli.add_argument("args", nargs=argparse.REMAINDER)
    ns = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if ns.command == "serve":
        request = serve(ns.socket, preload_modules(os.environ))
        if request is None:
            Path(ns.socket).unlink(missing_ok=True)
            return 0
        try:
            become(request)
        except Exception as exc:  # any error of the worker program
            _leave_failed(exc)
        return 0
    args = list(ns.args)
    if args[:1] == ["--"]:
        args = args[1:]
    return run_client(Program(ns.module, ns.script, tuple(args)))


if __name__ == "__main__":
    sys.exit(main())

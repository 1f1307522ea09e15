"""The trainer container's entrypoint: elastic torchrun from the operator's env.

``python -m trainop_runtime.launch [--module M | --script S] [--standalone] -- ARGS...``

Differences from plain ``torchrun``, each for a user-visible reason:

* c10d rendezvous against the job's store pod as a *client* (``is_host=false``),
  so no worker pod's death takes the rendezvous store down.
* Exit code of the first failed worker (128+N for a signal) instead of torchrun's 1,
  and a one-line reason in the termination log: the operator's failure policy and
  ``kubectl describe`` see the real cause (OOMKilled 137, a Python error 1, ...).
* SIGTERM gives workers the pod's grace period to checkpoint, minus a margin for
  the agent to exit, through torchrun's ``--shutdown-timeout`` (``LaunchConfig.
  shutdown_timeout``, passed to ``LocalElasticAgent`` and used on its SIGTERM path;
  checked in torch 2.15). Older torch hard-coded 30 s (pytorch/pytorch#119856):
  there the flag is dropped with a warning.
* Every rendezvous round gets a fresh bootstrap store and an attempt id
  (:mod:`trainop_runtime.rendezvous`): in-place restarts re-form the group on the
  first try, for a plain ``init_process_group("env://")`` script too.
* Each Python worker starts through a small client that records the agent's restart
  count in progress.json, so the budget counts in-place restarts of any script.
* Python workers are forked from a pre-imported zygote (:mod:`trainop_runtime.zygote`),
  so a restart does not pay ``import torch`` again.
* gpus.json for the metrics sidecar.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import NoReturn

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.elastic.rendezvous.api import RendezvousConnectionError
from torch.distributed.launcher.api import launch_agent
from torch.distributed.run import config_from_args, get_args_parser, parse_args

from trainop_runtime import contract, gpus, rendezvous, zygote

logger = logging.getLogger("trainop_runtime.launch")

_REASON_MAX = 400  # the kubelet keeps 4 KiB of the termination log; one line is plenty


@dataclass(frozen=True)
class Entry:
    """What each worker runs: ``python -m module``, ``python script`` or, with
    ``no_python``, the program that is the first of ``args``; plus args."""

    module: str | None
    script: str | None
    args: tuple[str, ...] = ()
    no_python: bool = False


def shutdown_timeout_for_grace(grace_seconds: float) -> int:
    """Seconds workers get between SIGTERM and SIGKILL. Purely computational.

    The kubelet SIGKILLs the whole container at the grace period, so the agent
    keeps a margin (10 %, at least 2 s) to reap workers and write the termination log.
    """
    margin = max(2.0, 0.1 * grace_seconds)
    return max(1, int(grace_seconds - margin))


def merge_rdzv_conf(conf: str, defaults: Mapping[str, str]) -> str:
    """``k=v,k=v`` with ``defaults`` added where the user did not set the key. Pure."""
    pairs = [p.strip() for p in conf.split(",") if p.strip()]
    keys = {p.split("=", 1)[0].strip() for p in pairs}
    pairs += [f"{k}={v}" for k, v in defaults.items() if k not in keys]
    return ",".join(pairs)


def build_torchrun_args(env: Mapping[str, str], entry: Entry, *, standalone: bool) -> list[str]:
    """torchrun's argv from the operator's env. Purely computational.

    Every knob is passed explicitly rather than left to torchrun's PET_* defaults,
    so the launcher's log shows exactly what ran.
    """
    args = [
        "--nnodes",
        env.get(contract.PET_NNODES, "1"),
        "--nproc-per-node",
        env.get(contract.PET_NPROC_PER_NODE, "1"),
    ]
    run_id = env.get(contract.PET_RDZV_ID) or env.get(contract.ENV_JOB_NAME) or "trainop"
    if standalone:
        # The agent hosts its own store on a free port, like torchrun --standalone.
        args += ["--rdzv-backend", rendezvous.BACKEND, "--rdzv-endpoint", "localhost:0"]
        args += ["--rdzv-id", run_id]
        conf = env.get(contract.PET_RDZV_CONF, "")
    else:
        endpoint = env.get(contract.PET_RDZV_ENDPOINT, "").strip()
        if not endpoint:
            raise ValueError(f"{contract.PET_RDZV_ENDPOINT} is not set (or use --standalone)")
        backend = env.get(contract.PET_RDZV_BACKEND, contract.RDZV_BACKEND)
        if backend == "c10d":
            backend = rendezvous.BACKEND
        args += ["--rdzv-backend", backend, "--rdzv-endpoint", endpoint, "--rdzv-id", run_id]
        key, value = contract.RDZV_CONF_IS_HOST.split("=", 1)
        conf = merge_rdzv_conf(env.get(contract.PET_RDZV_CONF, ""), {key: value})
    if conf:
        args += ["--rdzv-conf", conf]
    if env.get(contract.PET_MAX_RESTARTS):
        args += ["--max-restarts", env[contract.PET_MAX_RESTARTS]]
    if env.get(contract.PET_MONITOR_INTERVAL):
        args += ["--monitor-interval", env[contract.PET_MONITOR_INTERVAL]]
    if env.get(contract.ENV_GRACE_SECONDS):
        grace = float(env[contract.ENV_GRACE_SECONDS])
        args += ["--shutdown-timeout", str(shutdown_timeout_for_grace(grace))]
    if entry.module:
        args += ["--module", entry.module]
    elif entry.script:
        args += [entry.script]
    elif entry.no_python and entry.args and not entry.args[0].startswith("-"):
        # The program is the first arg; torchrun must not read it as one of its options.
        args += ["--no-python", entry.args[0]]
        return [*args, *entry.args[1:]]
    else:
        raise ValueError(
            f"no entrypoint: pass --module/--script or set "
            f"{contract.ENV_ENTRY_MODULE}/{contract.ENV_ENTRY_SCRIPT}"
        )
    return [*args, *entry.args]


def zygote_entry(entry: Entry, python: str) -> Entry | None:
    """The entry that has each worker forked by the zygote, or None where it cannot
    apply (a non-Python program). Purely computational."""
    if entry.no_python or not (entry.module or entry.script):
        return None
    program = zygote.Program(entry.module, entry.script, entry.args)
    return Entry(None, None, tuple(zygote.client_argv(python, program)), no_python=True)


class Zygote:
    """This pod's zygote server: started before the agent, killed after it."""

    def __init__(self, socket_dir: Path) -> None:
        self.dir = socket_dir
        self.path = str(socket_dir / "sock")
        self.proc = subprocess.Popen([sys.executable, "-m", zygote.MODULE, "serve", self.path])
        deadline = time.monotonic() + 10
        # It binds before importing anything heavy; workers that find no socket
        # start the ordinary way, so this wait is only for the fast path.
        while not Path(self.path).exists() and time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)

    @classmethod
    def start(cls, run_dir: Path) -> Zygote | None:
        """None where no socket directory can be made (read-only /tmp and run dir):
        workers then start the ordinary way."""
        # Unix socket paths are limited to 108 bytes: /tmp first, the run dir next.
        for parent in (None, run_dir):
            try:
                return cls(Path(tempfile.mkdtemp(prefix="trainop-zygote-", dir=parent)))
            except OSError as e:
                logger.warning("no zygote socket dir under %s: %s", parent or "$TMPDIR", e)
        return None

    def stop(self) -> None:
        # It ignores SIGTERM (see zygote.serve); every worker has exited by now.
        self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass(frozen=True)
class WorkerFailure:
    """The parts of torch's ProcessFailure that decide the exit code (testable without torch)."""

    rank: int
    exitcode: int
    timestamp: float
    pid: int
    message: str
    has_error_file: bool


def exit_code_of(exitcode: int) -> int:
    """A shell-style exit status: a death by signal N (Popen's -N) becomes 128+N. Pure."""
    if exitcode < 0:
        return 128 + (-exitcode)
    return min(exitcode, 255) or 1


def error_file_message(raw: object) -> str:
    """The exception line of a worker's error file, as torch parsed it. Pure.

    torch keeps {"message": "Type: text", "extraInfo": {"py_callstack": ...}} from a
    worker wrapped in @record; printed whole, that dict would fill the termination log
    with a repr of the traceback and cut off the cause (ENOSPC...) it ends with.
    """
    if isinstance(raw, dict):
        inner = raw.get("message")
        return inner if isinstance(inner, str) else ""
    return str(raw)


def describe_failure(failures: Sequence[WorkerFailure]) -> tuple[int, str]:
    """(exit code, one-line reason) of the root-cause failure. Purely computational.

    The earliest failure wins. torch stamps failures without an error file with
    whole seconds, so ties are common: a worker killed by a signal (OOM killer,
    a kill) is then preferred, because peers that lose it fail *because* of it.
    """
    if not failures:
        return 1, "worker group failed with no recorded failure"
    first = min(failures, key=lambda f: (int(f.timestamp), f.exitcode >= 0, f.rank))
    code = exit_code_of(first.exitcode)
    if first.exitcode < 0:
        try:
            name = signal.Signals(-first.exitcode).name
        except ValueError:
            name = f"signal {-first.exitcode}"
        reason = f"worker rank {first.rank} (pid {first.pid}) was killed by {name} (exit {code})"
    else:
        reason = f"worker rank {first.rank} (pid {first.pid}) exited with {code}"
        if first.has_error_file and first.message:
            reason += ": " + first.message.strip().splitlines()[-1]
    return code, reason[:_REASON_MAX]


def write_termination_log(env: Mapping[str, str], reason: str) -> None:
    path = Path(env.get(contract.ENV_TERMINATION_LOG, contract.TERMINATION_LOG))
    try:
        path.write_text(reason.replace("\n", " ")[:_REASON_MAX] + "\n")
    except OSError as e:
        logger.warning("cannot write termination log %s: %s", path, e)


def parse_argv(argv: Sequence[str], env: Mapping[str, str]) -> tuple[Entry, bool]:
    parser = argparse.ArgumentParser(
        prog="python -m trainop_runtime.launch", description=__doc__.splitlines()[0]
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--module", help="run `python -m MODULE` in each worker")
    which.add_argument("--script", help="run `python SCRIPT` in each worker")
    which.add_argument(
        "--no-python",
        action="store_true",
        help="run the program named by the first arg after -- (spec.entrypoint.command)",
    )
    parser.add_argument(
        "--standalone", action="store_true", help="one node, own store: no store pod needed"
    )
    parser.add_argument("args", nargs=argparse.REMAINDER, help="-- then the program's args")
    ns = parser.parse_args(argv)
    rest = list(ns.args)
    if rest[:1] == ["--"]:
        rest = rest[1:]
    module = ns.module or (None if ns.script else env.get(contract.ENV_ENTRY_MODULE))
    script = ns.script or (None if module else env.get(contract.ENV_ENTRY_SCRIPT))
    if ns.no_python:
        return Entry(None, None, tuple(rest), no_python=True), bool(ns.standalone)
    return Entry(module=module, script=script, args=tuple(rest)), bool(ns.standalone)


def _raise_signal_exception(signum: int, frame: FrameType | None) -> NoReturn:
    raise SignalException(f"received {signal.Signals(signum).name}", sigval=signal.Signals(signum))


def run(argv: Sequence[str], env: Mapping[str, str]) -> int:
    """Launch the agent in this process; return the container's exit code."""
    entry, standalone = parse_argv(argv, env)
    run_dir = Path(env.get(contract.ENV_RUN_DIR, contract.DEFAULT_RUN_DIR))
    try:
        uuids = gpus.write_gpus_file(run_dir, env)
        logger.info("GPUs visible to this container: %s", uuids or "none")
    except OSError as e:
        logger.warning("cannot write %s: %s", contract.GPUS_FILE, e)
    rendezvous.register(run_dir)
    server = None
    # Python workers always start through the client, which records the agent's
    # restart count in progress.json first (progress.report_restarts); with no
    # zygote socket it just execs the program.
    forked = zygote_entry(entry, sys.executable)
    if forked is not None and zygote.enabled(env):
        server = Zygote.start(run_dir)
    if server is not None:
        os.environ[zygote.ENV_SOCKET] = server.path  # torchrun passes os.environ on
    else:
        os.environ.pop(zygote.ENV_SOCKET, None)  # not an outer launcher's socket
    if forked is not None:
        entry = forked
    try:
        return _run_agent(env, entry, run_dir, standalone=standalone)
    finally:
        if server is not None:
            server.stop()


def _run_agent(env: Mapping[str, str], entry: Entry, run_dir: Path, *, standalone: bool) -> int:
    torchrun_argv = build_torchrun_args(env, entry, standalone=standalone)
    if "--shutdown-timeout" not in get_args_parser()._option_string_actions:
        i = (
            torchrun_argv.index("--shutdown-timeout")
            if "--shutdown-timeout" in torchrun_argv
            else -1
        )
        if i >= 0:
            logger.warning("this torch's torchrun has no --shutdown-timeout: workers get 30 s")
            del torchrun_argv[i : i + 2]
    logger.info("torchrun %s", " ".join(torchrun_argv))
    rendezvous.append_event(run_dir, "launch", argv=torchrun_argv)

    # torch installs its SIGTERM handler only once workers start; a SIGTERM during
    # the first rendezvous must still end in a clean exit code and reason.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _raise_signal_exception)

    # torch.distributed.run.parse_args is unannotated.
    torchrun_ns = parse_args(torchrun_argv)  # type: ignore[no-untyped-call]
    config, cmd, cmd_args = config_from_args(torchrun_ns)
    try:
        launch_agent(config, cmd, list(cmd_args))
    except ChildFailedError as e:
        code, reason = describe_failure(
            [
                WorkerFailure(
                    rank=rank,
                    exitcode=f.exitcode,
                    timestamp=f.timestamp,
                    pid=f.pid,
                    message=error_file_message(f.message),
                    has_error_file=bool(f.error_file_data),
                )
                for rank, f in e.failures.items()
            ]
        )
    except RendezvousConnectionError as e:
        code = contract.EXIT_RENDEZVOUS_LOST
        reason = f"rendezvous store lost: {e}"
    except SignalException as e:
        code = 128 + int(e.sigval)
        reason = f"{e.sigval.name} received; workers had {config.shutdown_timeout} s to checkpoint"
    except Exception as e:
        code, reason = 1, f"launcher failed: {type(e).__name__}: {e}"
        logger.exception("launcher failed")
    else:
        code, reason = 0, "training finished"
    write_termination_log(env, reason)
    rendezvous.append_event(run_dir, "exit", code=code, reason=reason)
    logger.info("exit %d: %s", code, reason)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return run(sys.argv[1:] if argv is None else argv, os.environ)


if __name__ == "__main__":
    sys.exit(main())

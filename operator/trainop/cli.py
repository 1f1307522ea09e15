"""The `trainop` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _serve_metrics(health: Callable[[], tuple[bool, str]]) -> None:
    """/metrics, and /healthz answering `health()` with 200 or 503. Started before
    leader election, so standby replicas answer their probes too."""
    import threading  # noqa: PLC0415
    from socketserver import ThreadingMixIn  # noqa: PLC0415
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server  # noqa: PLC0415

    from prometheus_client import make_wsgi_app  # noqa: PLC0415

    port = int(os.environ.get("TRAINOP_METRICS_PORT", "8080"))
    if not port:
        return
    metrics = make_wsgi_app()

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        if environ.get("PATH_INFO") != "/healthz":
            return list(metrics(environ, start_response))
        ok, why = health()
        status = "200 OK" if ok else "503 Service Unavailable"
        start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
        return [f"{why}\n".encode()]

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            """Probes every few seconds would flood the log."""

    # A pod's metrics port: every interface, unless told otherwise (tests use 127.0.0.1).
    addr = os.environ.get("TRAINOP_METRICS_ADDR", "0.0.0.0")  # noqa: S104
    server = make_server(addr, port, app, Server, handler_class=QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()


async def _run_operator(args: argparse.Namespace) -> int:
    import kopf  # noqa: PLC0415
    from kopf._core.engines.peering import Identity  # noqa: PLC0415  (kopf does not re-export it)

    from trainop.kube.client import Kube  # noqa: PLC0415
    from trainop.kube.lease import LeaderElector  # noqa: PLC0415

    namespaces = args.namespace or []
    stop = asyncio.Event()
    holder = None
    elector = None
    # Our own identity for Kopf and the Lease. Left to itself Kopf asks
    # getpass.getuser(), which raises for a uid with no passwd entry: an image run
    # with another runAsUser than its USER would crash-loop before reconciling anything.
    identity = os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
    # Each replica's requests carry its identity: the API server's audit log tells them apart.
    memo = kopf.Memo(user_agent=f"trainop-operator/{identity}", fence=None, namespaces=namespaces)
    if not args.leader_elect:
        # The probes ask Kopf's --liveness endpoint instead.
        _serve_metrics(lambda: (True, "no leader election"))
    else:
        kube = await Kube.connect(os.environ.get("KUBECONFIG"), user_agent=memo.user_agent)
        elector = LeaderElector(kube, args.lease_namespace, args.lease_name, identity)
        _serve_metrics(elector.health)
        await elector.acquire()
        holder = asyncio.create_task(elector.hold(stop))
        # Every write of the operator asks the lease first (kube.client.Kube's fence).
        memo.fence = elector.may_write
        asyncio.create_task(_stop_work_when(stop, memo))  # noqa: RUF006  (lives as long as we do)
    await kopf.operator(
        clusterwide=not namespaces,
        namespaces=namespaces,
        standalone=True,
        identity=Identity(identity),
        liveness_endpoint=args.liveness,
        stop_flag=stop,
        memo=memo,
    )
    if holder is not None:
        holder.cancel()
    if elector is not None and not stop.is_set():
        await elector.release()
    # Exiting non-zero after losing the lease lets Kubernetes restart us as a standby.
    return 1 if stop.is_set() else 0


async def _stop_work_when(stop: asyncio.Event, memo: Any) -> None:
    """On losing the lease, stop reconciling at once: Kopf's own shutdown (watchers,
    then cleanup handlers) takes seconds, and no reconcile may start meanwhile."""
    await stop.wait()
    queue = memo.get("queue")
    if queue is not None:
        await queue.close()


def _operator(args: argparse.Namespace) -> int:
    # Imported here, not at the top: `trainop run` and the exporter must not pay for
    # (or need) Kopf, and importing the handlers module registers its handlers.
    from trainop.handlers import operator as _handlers  # noqa: F401, PLC0415

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        # Kopf logs every handler call at INFO: hundreds of lines per job start, and
        # measurable CPU on a busy operator. Our own Events and logs say what matters.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    return asyncio.run(_run_operator(args))


def _run(args: argparse.Namespace) -> int:
    from trainop.local.runner import RunOptions, SpecError, run  # noqa: PLC0415

    opts = RunOptions(
        workdir=Path(args.workdir),
        metrics_port=args.metrics_port,
        kill_every=args.kill_every,
        kill_every_steps=args.kill_every_steps,
        seed=args.seed,
        replicas=args.replicas,
    )
    try:
        summary = run(Path(args.file), opts)
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if summary.phase == "Succeeded":
        return 0
    # Stopped by a signal: the shell's 128+N, so scripts can tell Ctrl-C from a failure.
    return 128 + summary.signal if summary.signal is not None else 1


def _version() -> str:
    """The installed distribution's version: what a bug report needs to name."""
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    try:
        return version("trainop")
    except PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trainop", description=__doc__)
    parser.add_argument("--version", action="version", version=f"trainop {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    op = sub.add_parser("operator", help="run the operator against the current kubeconfig")
    op.add_argument(
        "-n",
        "--namespace",
        action="append",
        help="watch only this namespace (repeatable); default: all namespaces",
    )
    op.add_argument(
        "--leader-elect",
        action="store_true",
        help="several replicas, one active: hold a coordination.k8s.io Lease",
    )
    op.add_argument(
        "--lease-namespace",
        default=os.environ.get("POD_NAMESPACE", "default"),
        help="namespace of the leader Lease (default: $POD_NAMESPACE or default)",
    )
    op.add_argument("--lease-name", default="trainop-operator", help="name of the leader Lease")
    op.add_argument(
        "--liveness", default=None, help="liveness endpoint, e.g. http://0.0.0.0:8081/healthz"
    )
    op.add_argument("-v", "--verbose", action="store_true")
    op.set_defaults(func=_operator)
    rn = sub.add_parser(
        "run",
        help="run a TrainingJob file on this machine, no cluster",
        description="Run a TrainingJob here, validated and supervised as the operator would. "
        "Each worker gets its own spec.resources.gpus GPUs (CPU when the machine has none). "
        "Ctrl-C, SIGTERM or SIGHUP stops after a final checkpoint (a second one kills the "
        "workers at once); the same command resumes. Exit code: 0 succeeded, 1 failed, "
        "2 invalid input, 128+N stopped by signal N.",
    )
    rn.add_argument(
        "file",
        nargs="?",
        default=str(Path(__file__).parent / "local" / "quickstart.yaml"),
        help="a TrainingJob YAML (default: the built-in quickstart, examples/quickstart.yaml)",
    )
    rn.add_argument(
        "--workdir",
        default=".trainop",
        help="checkpoints, logs and run dirs go here (default .trainop); "
        "running the same file again resumes from its checkpoints",
    )
    rn.add_argument(
        "--metrics-port",
        type=int,
        default=9400,
        help="the metrics exporter's port on 127.0.0.1 (default 9400, dcgm-exporter's); "
        "pick another when that one is taken",
    )
    rn.add_argument(
        "--replicas",
        type=int,
        default=None,
        help="override spec.replicas (validated like the file: within minReplicas..maxReplicas)",
    )
    rn.add_argument(
        "--kill-every",
        type=float,
        default=None,
        metavar="SECONDS",
        help="fault injection: SIGKILL a random worker process after this many seconds "
        "of training (counted from when training moves past the previous kill)",
    )
    rn.add_argument(
        "--kill-every-steps",
        type=int,
        default=None,
        metavar="STEPS",
        help="fault injection: SIGKILL a random worker process each time training gets "
        "this many steps past the previous kill (deterministic, whatever the machine's speed)",
    )
    rn.add_argument("--seed", type=int, default=0, help="seed of the fault injection")
    rn.set_defaults(func=_run)
    ex = sub.add_parser(
        "exporter",
        help="run the metrics sidecar (same as python -m trainop.exporter)",
        add_help=False,
    )
    ex.set_defaults(func=None)
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["exporter"]:
        from trainop.exporter.app import main as exporter_main  # noqa: PLC0415

        return exporter_main(argv[1:])
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())

"""The exporter process: configuration, the HTTP server, signal handling.

``main(argv)`` is what ``python -m trainop.exporter`` and the ``trainop``
CLI run. Every flag has an env var, so the operator configures the sidecar
through env alone.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from socketserver import ThreadingMixIn
from types import FrameType
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from prometheus_client import CollectorRegistry, ProcessCollector

from trainop import __version__
from trainop.exporter import names
from trainop.exporter.annotate import ANNOTATION, ProgressAnnotator
from trainop.exporter.collector import TrainopCollector
from trainop.exporter.exposition import CONTENT_TYPE, TextRenderer
from trainop.exporter.gpu import GpuReader
from trainop.exporter.nvml import Nvml, load_real
from trainop.exporter.progress import DEFAULT_STALE_SECONDS
from trainop.exporter.rapl import DEFAULT_POWERCAP_ROOT, RaplReader
from trainop.exporter.sampler import Sampler
from trainop_runtime import contract

log = logging.getLogger("trainop.exporter")

# The sidecar's own env (the operator sets these; defaults suit a pod).
ENV_ADDRESS = "TRAINOP_EXPORTER_ADDRESS"
ENV_PORT = "TRAINOP_EXPORTER_PORT"
ENV_ALL_GPUS = "TRAINOP_EXPORTER_ALL_GPUS"
ENV_STALE_SECONDS = "TRAINOP_EXPORTER_STALE_SECONDS"
ENV_POWERCAP_ROOT = "TRAINOP_EXPORTER_POWERCAP_ROOT"
ENV_LOG_LEVEL = "TRAINOP_EXPORTER_LOG_LEVEL"
ENV_SAMPLE_SECONDS = "TRAINOP_EXPORTER_SAMPLE_SECONDS"
ENV_NVML_TIMEOUT_SECONDS = "TRAINOP_EXPORTER_NVML_TIMEOUT_SECONDS"
# dcgm-exporter's port: what PodMonitors and firewall rules already expect.
DEFAULT_PORT = 9400
# Prometheus scrapes the pod IP, so a pod must listen on every interface, of
# either family: "::" with IPV6_V6ONLY off takes IPv4 and IPv6 connections
# (IPv6-only and dual-stack clusters), and becomes 0.0.0.0 where the kernel
# has no IPv6 at all.
DEFAULT_ADDRESS = "::"
ANY_IPV4 = "0.0.0.0"  # noqa: S104
METRICS_PATH = "/metrics"
# GPUs are read on the sampler's clock: well under the usual 15-30 s scrape
# interval, so rate() and irate() see a new energy reading on every scrape.
DEFAULT_SAMPLE_SECONDS = 5.0
# Per GPU and pass; real reads take milliseconds.
DEFAULT_NVML_TIMEOUT_SECONDS = 5.0
# A sample older than this many passes (plus one timeout) is withdrawn.
STALE_SAMPLES = 3

_TRUE = {"1", "true", "yes", "on"}
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True)
class ExporterConfig:
    address: str = DEFAULT_ADDRESS
    port: int = DEFAULT_PORT
    run_dir: Path = Path(contract.DEFAULT_RUN_DIR)
    all_gpus: bool = False
    stale_after_seconds: float = DEFAULT_STALE_SECONDS
    powercap_root: Path | None = DEFAULT_POWERCAP_ROOT
    log_level: str = "INFO"
    identity: Mapping[str, str] = field(default_factory=dict)
    # The `node` label of the GPU series (the operator passes spec.nodeName).
    node: str | None = None
    fake_nvml_gpus: int | None = None
    fake_nvml_control: Path | None = None
    sample_seconds: float = DEFAULT_SAMPLE_SECONDS
    nvml_timeout_seconds: float = DEFAULT_NVML_TIMEOUT_SECONDS

    @property
    def gpu_sample_stale_after_seconds(self) -> float:
        return STALE_SAMPLES * self.sample_seconds + self.nvml_timeout_seconds


def identity_from_env(environ: Mapping[str, str]) -> dict[str, str]:
    """Job identity labels from the pod's env; unset ones are left out."""
    pairs = (
        (names.L_TRAININGJOB, environ.get(contract.ENV_JOB_NAME, "")),
        (names.L_TRAININGJOB_NAMESPACE, environ.get(contract.ENV_JOB_NAMESPACE, "")),
        (names.L_TRAININGJOB_POD, environ.get(contract.ENV_POD_NAME, "")),
    )
    return {label: value for label, value in pairs if value}


def parse_config(argv: Sequence[str] | None, environ: Mapping[str, str]) -> ExporterConfig:
    env = environ.get
    parser = argparse.ArgumentParser(
        prog="python -m trainop.exporter",
        description="Serve GPU, energy and training-progress metrics of one training pod "
        "for Prometheus.",
    )
    parser.add_argument(
        "--address",
        default=env(ENV_ADDRESS, DEFAULT_ADDRESS),
        help=f"listen address; the default {DEFAULT_ADDRESS} takes IPv4 and IPv6 "
        f"({ANY_IPV4} on a host without IPv6) (env {ENV_ADDRESS})",
    )
    parser.add_argument(
        "--port", type=int, default=env(ENV_PORT, DEFAULT_PORT), help=f"env {ENV_PORT}"
    )
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=Path(env(contract.ENV_RUN_DIR, contract.DEFAULT_RUN_DIR)),
        help=f"where the trainer writes {contract.PROGRESS_FILE} and {contract.GPUS_FILE} "
        f"(env {contract.ENV_RUN_DIR})",
    )
    parser.add_argument(
        "--all-gpus",
        action="store_true",
        default=env(ENV_ALL_GPUS, "").lower() in _TRUE,
        help=f"export every GPU of the node, not only those in {contract.GPUS_FILE}: "
        f"for a node owned by one job (env {ENV_ALL_GPUS}=1)",
    )

    def seconds(flag: str, env_name: str, default: float, help_text: str) -> None:
        parser.add_argument(
            flag,
            type=float,
            default=env(env_name, default),
            metavar="SECONDS",
            help=f"{help_text} (env {env_name})",
        )

    seconds(
        "--stale-after",
        ENV_STALE_SECONDS,
        DEFAULT_STALE_SECONDS,
        "a progress report older than this (or than 3 of its step durations, if longer) "
        "sets trainop_training_up 0",
    )
    parser.add_argument(
        "--powercap-root",
        default=env(ENV_POWERCAP_ROOT, str(DEFAULT_POWERCAP_ROOT)),
        help=f"sysfs powercap dir for RAPL CPU energy; empty disables (env {ENV_POWERCAP_ROOT})",
    )
    seconds(
        "--sample-every",
        ENV_SAMPLE_SECONDS,
        DEFAULT_SAMPLE_SECONDS,
        "read the GPUs this often, on a thread of their own; scrapes serve the last reading",
    )
    seconds(
        "--nvml-timeout",
        ENV_NVML_TIMEOUT_SECONDS,
        DEFAULT_NVML_TIMEOUT_SECONDS,
        "a GPU whose read takes longer is reported down until its NVML call returns",
    )
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=_LOG_LEVELS,
        default=env(ENV_LOG_LEVEL, "INFO").upper(),
        help=f"env {ENV_LOG_LEVEL}",
    )
    parser.add_argument(
        "--fake-nvml-gpus",
        type=int,
        default=None,
        metavar="N",
        help="TESTING ONLY: read N simulated GPUs (FakeNVML) instead of NVML",
    )
    parser.add_argument(
        "--fake-nvml-control",
        type=Path,
        default=None,
        metavar="FILE",
        help="TESTING ONLY: steer the --fake-nvml-gpus GPUs from this JSON file "
        "(fake_nvml.SteeredFakeNVML)",
    )
    args = parser.parse_args(argv)
    if args.fake_nvml_control is not None and args.fake_nvml_gpus is None:
        parser.error("--fake-nvml-control steers only --fake-nvml-gpus")
    if args.log_level not in _LOG_LEVELS:  # argparse checks choices on flags, not defaults
        parser.error(f"{ENV_LOG_LEVEL}: invalid level {args.log_level!r}")
    for flag, value in (
        ("--sample-every", args.sample_every),
        ("--nvml-timeout", args.nvml_timeout),
    ):
        if not value > 0:
            parser.error(f"{flag}: invalid value {value!r}: must be more than 0 seconds")
    return ExporterConfig(
        address=args.address,
        port=args.port,
        run_dir=args.run_dir,
        all_gpus=args.all_gpus,
        stale_after_seconds=args.stale_after,
        powercap_root=Path(args.powercap_root) if args.powercap_root else None,
        log_level=args.log_level,
        identity=identity_from_env(environ),
        node=environ.get(contract.ENV_NODE_NAME) or None,
        fake_nvml_gpus=args.fake_nvml_gpus,
        fake_nvml_control=args.fake_nvml_control,
        sample_seconds=args.sample_every,
        nvml_timeout_seconds=args.nvml_timeout,
    )


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """One line per scrape would drown the lines that matter."""


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    # A slow client must not hold up Prometheus' next scrape.
    daemon_threads = True


class _ThreadingServerV6(_ThreadingServer):
    address_family = socket.AF_INET6


class _DualStackServer(_ThreadingServerV6):
    def server_bind(self) -> None:
        # Explicit: with net.ipv6.bindv6only=1 "::" would refuse IPv4.
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def listen_address(requested: str, *, dual_stack: bool) -> str:
    """The address to bind: the default falls back to IPv4 without IPv6. Purely computational."""
    if requested == DEFAULT_ADDRESS and not dual_stack:
        return ANY_IPV4
    return requested


def _server_class(address: str) -> type[_ThreadingServer]:
    if address == DEFAULT_ADDRESS:
        return _DualStackServer
    return _ThreadingServerV6 if ":" in address else _ThreadingServer


def build_wsgi_app(registry: CollectorRegistry) -> WSGIApplication:
    renderer = TextRenderer()
    # One scrape at a time: the renderer's caches are shared state, and two
    # Prometheus replicas scraping together gain nothing from overlap. A scrape
    # never waits for NVML (the sampler reads it), so none holds this for long.
    lock = threading.Lock()

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == METRICS_PATH:
            if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
                start_response("405 Method Not Allowed", [("Allow", "GET, HEAD")])
                return [b""]
            with lock:
                body = renderer.render(registry.collect())
            start_response("200 OK", [("Content-Type", CONTENT_TYPE)])
            return [body]
        if path == "/healthz":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok\n"]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [f"trainop exporter: metrics are at {METRICS_PATH}\n".encode()]

    return app


def _open_nvml_for(config: ExporterConfig) -> Callable[[], Nvml]:
    if config.fake_nvml_gpus is None:
        return load_real
    # Imported here so that production never loads the fake (nor needs it to import).
    from trainop.exporter import fake_nvml  # noqa: PLC0415

    fake = Nvml(fake_nvml.demo(config.fake_nvml_gpus, config.fake_nvml_control))
    return lambda: fake


def build_collector(config: ExporterConfig) -> TrainopCollector:
    return TrainopCollector(
        run_dir=config.run_dir,
        gpu_reader=GpuReader(
            _open_nvml_for(config),
            monotonic=time.monotonic,
            read_timeout_seconds=config.nvml_timeout_seconds,
        ),
        rapl_reader=RaplReader(config.powercap_root),
        identity=config.identity,
        node=config.node,
        all_gpus=config.all_gpus,
        stale_after_seconds=config.stale_after_seconds,
        gpu_sample_stale_after_seconds=config.gpu_sample_stale_after_seconds,
    )


class RunningExporter:
    """An exporter serving on a background thread (for main() and in-process tests)."""

    def __init__(self, config: ExporterConfig, collector: TrainopCollector) -> None:
        self.collector = collector
        self.registry = CollectorRegistry()
        self.registry.register(collector)
        ProcessCollector(namespace=names.PROCESS_NAMESPACE, registry=self.registry)
        self.address = listen_address(config.address, dual_stack=socket.has_dualstack_ipv6())
        if self.address != config.address:
            log.info("no IPv6 on this host: listening on IPv4 only (%s)", self.address)
        self._server = make_server(
            self.address,
            config.port,
            build_wsgi_app(self.registry),
            server_class=_server_class(self.address),
            handler_class=_QuietHandler,
        )
        self.port: int = self._server.server_port
        host = f"[{self.address}]" if ":" in self.address else self.address
        self.url = f"http://{host}:{self.port}{METRICS_PATH}"
        self._sampler = Sampler(collector.sample_gpus, config.sample_seconds)
        # The first pass before serving, so the first scrape has GPUs; a pass stuck in
        # NVML costs one timeout per GPU, then serving starts regardless.
        if not self._sampler.start(wait_first=config.nvml_timeout_seconds * 2):
            log.error("the first GPU sample did not finish: serving without GPU readings")
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="trainop-exporter-http", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
        self._sampler.stop()
        self.collector.close()


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run the exporter until SIGTERM or SIGINT; returns the exit code."""
    config = parse_config(argv, os.environ if environ is None else environ)
    logging.basicConfig(
        level=config.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    collector = build_collector(config)
    try:
        exporter = RunningExporter(config, collector)
    except OSError as err:
        log.error("cannot listen on %s port %d: %s", config.address, config.port, err)
        collector.close()
        return 1
    log.info(
        "trainop exporter %s serving %s; run dir %s; GPUs: %s; labels %s; node %s",
        __version__,
        exporter.url,
        config.run_dir,
        "all on the node" if config.all_gpus else f"those in {contract.GPUS_FILE}",
        dict(config.identity) or "(no TRAINOP_* identity env)",
        config.node or f"unknown (no {contract.ENV_NODE_NAME})",
    )
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: shutting down", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    annotator = ProgressAnnotator.from_env(
        os.environ if environ is None else environ, config.run_dir
    )
    if annotator is None:
        stop.wait()
    else:
        log.info("pushing progress to pod annotation %s every %.0f s", ANNOTATION, annotator.every)
        while not stop.wait(annotator.every):
            annotator.push_once(collector.usage.totals())
        # Stopping with the pod: its last seconds count too (a deleting pod can be patched).
        annotator.push_once(collector.usage.totals())
    exporter.stop()
    return 0

"""Every alert the chart renders fires on time on a real Prometheus, at the chart's own
scrape and evaluation interval.

promtool's unit tests (alerts_test.yaml) prove the rules' logic on series written by
hand; this proves it on series as real processes make them: absent until Prometheus'
first scrape, then each sidecar's or operator's first sample. Real processes only: the
operator (`trainop operator`) on the local control plane, metrics sidecars
(`python -m trainop.exporter`, FakeNVML steered through its control file, a live
progress.json), and Prometheus with the chart's rendered rules, scraping every 30 s and
evaluating every 30 s as the chart's ServiceMonitor/PodMonitor and the Prometheus
Operator's default do. Windows are set to their minimum (1 minute) through the chart's
values, so one run takes minutes, not the defaults' half hour.

Each alert is driven once, all in parallel, and must:
- not be pending or firing before its condition was caused;
- fire no earlier than its `for` after going pending;
- fire at most `for` + 2 evaluation intervals + 1 scrape interval after its
  condition holds (plus the NVML sampler's period when the condition is in a GPU).
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.chart.helpers import (
    MONITORING_ON,
    recording_groups,
    rule_groups,
    template,
    write_rule_file,
)
from tests.chart.kube import phase, running_workers, training_job
from tests.chart.live import (
    Sidecar,
    default_interval,
    evaluate,
    has_data,
    http_json,
    seconds,
    start_prometheus,
    start_sidecar,
)
from tests.cluster.conftest import Cluster, Operator, wait_for
from tests.procs import stop_group

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
log = logging.getLogger(__name__)

# The shortest windows the chart allows (whole minutes), for a run of minutes.
WINDOW_MINUTES = 1
SHORT = [
    f"monitoring.prometheusRule.{name}={WINDOW_MINUTES}"
    for name in (
        "stalledMinutes",
        "idleMinutes",
        "throttleMinutes",
        "hangMinutes",
        "downMinutes",
        "pendingMinutes",
    )
]
VALUES = ("--set", ",".join(SHORT))
# The exporter's default --sample-every: a GPU change reaches /metrics this much later.
SAMPLE_SECONDS = 5.0
# /api/v1/alerts is polled this often: a firing is seen up to this much late.
POLL_SECONDS = 1.0
HW_SLOWDOWN = 0x008  # nvmlClocksEventReasonHwSlowdown
XID = 79  # "GPU has fallen off the bus"
OPERATOR_RESTARTS = 5  # the chart's default operatorRestarts
JOB_RESTARTS = 3  # the chart's default jobRestarts


def scrape_configs() -> tuple[str, str, str]:
    """The job labels the Prometheus Operator gives the chart's targets: a PodMonitor's
    are <namespace>/<name>; a ServiceMonitor's, its Service's name (and its namespace
    in `namespace`). The rules' target alerts select exactly these."""
    rendered = template(*MONITORING_ON)
    pm = rendered.one("PodMonitor")["metadata"]
    svc = rendered.one("Service", "-metrics")["metadata"]
    return f"{pm['namespace']}/{pm['name']}", svc["name"], svc["namespace"]


@dataclass
class Drive:
    """When an alert's condition was caused, and when it held for certain."""

    caused_at: float
    holds_at: float


@dataclass
class Seen:
    """What /api/v1/alerts showed of one alert: its earliest activeAt, first firing."""

    active_at: float = float("inf")
    firing_at: float | None = None


@dataclass
class Watcher:
    """Polls Prometheus' alerts on a thread of its own, while the test drives."""

    host: str
    seen: dict[str, Seen] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self) -> None:
        while not self.stop.wait(POLL_SECONDS):
            now = time.time()
            try:
                alerts = http_json(self.host, "/api/v1/alerts")["data"]["alerts"]
            except OSError:  # a slow answer on a loaded machine: the next poll sees it
                continue
            with self.lock:
                for alert in alerts:
                    s = self.seen.setdefault(alert["labels"]["alertname"], Seen())
                    active = datetime.fromisoformat(alert["activeAt"]).timestamp()
                    s.active_at = min(s.active_at, active)
                    if alert["state"] == "firing" and s.firing_at is None:
                        s.firing_at = now

    def firing(self, *names: str) -> bool:
        with self.lock:
            return all(self.seen.get(n, Seen()).firing_at is not None for n in names)

    def active(self, *, now: bool = False) -> list[str]:
        """Alerts seen pending or firing; `now`: in Prometheus' answer at this moment."""
        if now:
            alerts = http_json(self.host, "/api/v1/alerts")["data"]["alerts"]
            return sorted({a["labels"]["alertname"] for a in alerts})
        with self.lock:
            return sorted(self.seen)

    def fired(self) -> list[str]:
        with self.lock:
            return sorted(n for n, s in self.seen.items() if s.firing_at is not None)

    def forget(self) -> None:
        with self.lock:
            self.seen.clear()


def for_seconds() -> dict[str, float]:
    return {
        r["alert"]: seconds(r["for"]) if "for" in r else 0.0
        for g in rule_groups(*VALUES)["groups"]
        for r in g["rules"]
    }


def fail_worker(c: Cluster, ns: str, job: str) -> None:
    (pod,) = running_workers(c, ns, job, 1)
    c.kubectl("annotate", "pod", pod["metadata"]["name"], "-n", ns, "kwok.trainop.dev/exit-code=1")


def restarts(c: Cluster, ns: str, job: str) -> int:
    return int((c.get("trainingjob", job, ns).get("status") or {}).get("restarts") or 0)


@dataclass
class Scene:
    """The processes one run steers: the operator and a sidecar per fault."""

    op: Operator
    stalled: Sidecar  # its trainer hangs on busy GPUs
    idle: Sidecar  # job "gpus", worker 0: its GPU goes idle
    lost: Sidecar  # job "gpus", worker 1: its GPU falls off the bus
    faulty: Sidecar  # throttled, XID, ECC, worker-group restarts
    gone: Sidecar  # killed

    @property
    def sidecars(self) -> list[Sidecar]:
        return [self.stalled, self.idle, self.lost, self.faulty, self.gone]


def drive_sidecars(scene: Scene) -> dict[str, Drive]:
    """Cause every condition inside the sidecars at once; when each holds."""
    t0 = time.time()
    window = WINDOW_MINUTES * 60
    scene.stalled.trainer.hang.set()
    scene.idle.steer_gpu(gpu_util_percent=0)
    scene.lost.steer_gpu(lost=True)
    scene.faulty.steer_gpu(clock_event_reasons=HW_SLOWDOWN, ecc_uncorrected=1, xids=[XID])
    scene.faulty.trainer.restarts = JOB_RESTARTS
    stop_group(scene.gone.proc, grace=5)
    return {
        # report age over the window (or no step change over it)
        "TrainopTrainingStalled": Drive(t0, t0 + window),
        "TrainopTrainingHung": Drive(t0, t0 + window),
        # averages over the window: whole once it holds only new samples
        "TrainopGPUIdle": Drive(t0, t0 + window + SAMPLE_SECONDS),
        "TrainopGPUThrottled": Drive(t0, t0 + window + SAMPLE_SECONDS),
        "TrainopGPUDown": Drive(t0, t0 + SAMPLE_SECONDS),
        "TrainopGPUXidError": Drive(t0, t0 + SAMPLE_SECONDS),
        "TrainopGPUECCUncorrected": Drive(t0, t0 + SAMPLE_SECONDS),
        "TrainopJobRestartStorm": Drive(t0, t0 + 1),  # the trainer writes every 0.5 s
        "TrainopExporterDown": Drive(t0, time.time()),
    }


def drive_failures(c: Cluster, ns: str) -> dict[str, Drive]:
    """Fail the storm job's worker until the operator has replaced it
    OPERATOR_RESTARTS times, its whole budget, then once more: Failed."""
    caused = time.time()
    for n in range(1, OPERATOR_RESTARTS + 1):
        caused = time.time()
        fail_worker(c, ns, "storm")
        wait_for(f"restart {n} counted", lambda n=n: restarts(c, ns, "storm") >= n, 60)
    storm = Drive(caused, time.time())
    caused = time.time()
    fail_worker(c, ns, "storm")
    phase(c, ns, "storm", "Failed")
    return {"TrainopRestartStorm": storm, "TrainopJobFailed": Drive(caused, time.time())}


def judge(
    drives: dict[str, Drive], seen: dict[str, Seen], fors: dict[str, float], interval: float
) -> tuple[list[str], list[str]]:
    """Each alert's timing as a line, and what was wrong with it. Purely computational."""
    report: list[str] = []
    problems: list[str] = []
    for alert in sorted(fors):
        d, s, hold = drives[alert], seen[alert], fors[alert]
        assert s.firing_at is not None
        late = s.firing_at - d.holds_at - hold
        report.append(
            f"{alert}: pending {s.active_at - d.caused_at:+.0f} s after cause, firing "
            f"{s.firing_at - s.active_at:.0f} s later (for {hold:.0f} s), {late:+.0f} s vs on time"
        )
        if s.active_at < d.caused_at:
            problems.append(f"{alert} was active before its condition")
        if s.firing_at - s.active_at < hold:
            problems.append(f"{alert} fired before its `for`")
        if late > 2 * interval + interval + POLL_SECONDS:
            problems.append(f"{alert} fired {late:.0f} s late")
    return report, problems


def watch(stack: ExitStack, host: str) -> Watcher:
    watcher = Watcher(host)
    thread = threading.Thread(target=watcher.run, daemon=True)
    thread.start()
    stack.callback(thread.join)
    stack.callback(watcher.stop.set)
    return watcher


def scrape_config(scene: Scene) -> list[dict[str, Any]]:
    exporter_job, operator_job, operator_ns = scrape_configs()
    operator_target = {
        "targets": [f"127.0.0.1:{scene.op.metrics_port}"],
        "labels": {"namespace": operator_ns},
    }
    sidecars = [f"127.0.0.1:{s.port}" for s in scene.sidecars]
    return [
        {"job_name": exporter_job, "static_configs": [{"targets": sidecars}]},
        {"job_name": operator_job, "static_configs": [operator_target]},
    ]


def test_every_alert_fires_on_time(crd: Cluster, ns: str, tmp_path: Path) -> None:
    c = crd
    interval = default_interval()
    fors = for_seconds()
    op = Operator(c, tmp_path / "operator.log")
    op.start()
    with ExitStack() as stack:
        stack.callback(op.stop)
        # GPUIdle and GPUDown need a job the operator reports Running; the storm job is
        # failed worker by worker: 5 replacements (budget 5), then Failed.
        c.apply(training_job("gpus"), ns)
        policy = {"backoffSeconds": 0, "backoffLimit": OPERATOR_RESTARTS}
        c.apply(training_job("storm", 1, failurePolicy=policy), ns)
        running_workers(c, ns, "gpus", 2)
        phase(c, ns, "gpus", "Running")
        running_workers(c, ns, "storm", 1)

        def car(job: str, slot: int) -> Sidecar:
            s = start_sidecar(stack, tmp_path, ns, job, slot)
            # No restart of its own (live.Trainer makes one): only the faulty job's count.
            s.trainer.restarts = 0
            return s

        scene = Scene(
            op, car("stalled", 0), car("gpus", 0), car("gpus", 1), car("faulty", 0), car("gone", 1)
        )
        rules = [
            write_rule_file(tmp_path / "rules.yaml", *VALUES),
            write_rule_file(tmp_path / "recording.yaml", *VALUES, recording=True),
        ]
        host = start_prometheus(
            stack, tmp_path, rules, scrape_config(scene), interval=f"{interval:g}s"
        )
        started = time.monotonic()
        watcher = watch(stack, host)
        # Every target scraped once: each series' first sample (counters at 0) is in.
        wait_for(
            "a first scrape of every target",
            lambda: len(evaluate(host, "up == 1")) == len(scene.sidecars) + 1,
            timeout=3 * interval,
        )
        # Before its first scrape, the operator counts as down: wait out that pending.
        wait_for("no alert before any fault", lambda: not watcher.active(now=True), 2 * interval)
        assert not watcher.fired(), "an alert fired before any fault"
        watcher.forget()

        drives = drive_sidecars(scene) | drive_failures(c, ns)
        # The operator's own metrics carry GPUIdle and GPUDown: it goes down only after.
        need_operator = ["TrainopGPUIdle", "TrainopGPUDown", "TrainopRestartStorm"]
        budget = max(drives[a].holds_at + fors[a] for a in need_operator) - time.time()
        wait_for("alerts that need the operator", lambda: watcher.firing(*need_operator),
                 budget + 3 * interval)  # fmt: skip
        t1 = time.time()
        op.stop()
        drives["TrainopOperatorDown"] = Drive(t1, t1)
        budget = max(d.holds_at + fors[a] for a, d in drives.items()) - time.time()
        wait_for("every alert firing", lambda: watcher.firing(*fors), budget + 3 * interval)
        runtime = time.monotonic() - started
        # By now every window of the usage records is full at this scrape interval.
        records = [r["record"] for g in recording_groups(*VALUES)["groups"] for r in g["rules"]]
        blank = [r for r in records if not has_data(evaluate(host, r))]
        assert blank == [], f"recording rules without data at a {interval:g} s scrape"

    assert sorted(drives) == sorted(fors)
    report, problems = judge(drives, watcher.seen, fors, interval)
    log.info("scrape and evaluation every %g s, %.0f s in all", interval, runtime)
    log.info("\n".join(report))
    assert problems == [], "\n".join([*problems, *report])

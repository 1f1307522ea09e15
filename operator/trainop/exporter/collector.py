"""The Prometheus collector: read every source, then build the metrics fresh.

Files (progress, RAPL) are read on each scrape. NVML is not: a call can hang
in the driver, so GPUs are read by ``sample_gpus`` on the sampler's thread
(``sampler.py``) and a scrape serves the last sample with its age, never
waiting for NVML. Nothing else is kept between scrapes except what a counter
needs (running totals) and NVML's handles, so a GPU that disappears or a
trainer that stops reporting leaves no stale series behind, and a sample too
old to trust is withdrawn. ``build_metrics`` is the pure half: a snapshot in,
metric families out.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.samples import Sample

from trainop import __version__
from trainop.exporter import names as n
from trainop.exporter import visibility
from trainop.exporter.gpu import GpuReader, GpuReading, GpuSnapshot
from trainop.exporter.progress import (
    DEFAULT_STALE_SECONDS,
    TrainingView,
    assess_progress,
    parse_progress,
)
from trainop.exporter.rapl import RaplReader, RaplSnapshot
from trainop.exporter.statelog import StateLog
from trainop.exporter.usage import UsageMeter
from trainop_runtime import contract

log = logging.getLogger(__name__)

T = TypeVar("T")

SOURCES = (n.SOURCE_NVML, n.SOURCE_PROGRESS, n.SOURCE_GPUS_FILE, n.SOURCE_RAPL)


@dataclass(frozen=True)
class GpuSample:
    """One sampler pass: the GPU readings and when they were taken."""

    gpu: GpuSnapshot
    # How many GPUs gpus.json lists; None until the trainer has written it.
    assigned: int | None
    taken_at: float  # the collector's timer


@dataclass(frozen=True)
class Snapshot:
    """Everything one scrape read, ready to be turned into metrics."""

    now: float
    gpu: GpuSnapshot
    # How many GPUs gpus.json lists; None until the trainer has written it.
    assigned_gpus: int | None
    training: TrainingView
    rapl: RaplSnapshot
    read_errors: Mapping[str, int]
    last_collect_seconds: float | None = None
    # Seconds since the GPU readings served were taken; None before the first sample.
    gpu_sample_age: float | None = None


class LabelSets:
    """One label dict per series, kept across scrapes.

    The renderer recognises a series by its dict's identity, so reusing the
    dict skips re-rendering its labels. Only last scrape's sets are kept.
    """

    def __init__(self, identity: Mapping[str, str]) -> None:
        self._identity = dict(identity)
        self._previous: dict[tuple[tuple[str, ...], tuple[str, ...]], dict[str, str]] = {}
        self._current: dict[tuple[tuple[str, ...], tuple[str, ...]], dict[str, str]] = {}

    def new_scrape(self) -> None:
        self._previous, self._current = self._current, {}

    def get(self, names: tuple[str, ...], values: tuple[str, ...]) -> dict[str, str]:
        key = (names, values)
        labels = self._current.get(key) or self._previous.get(key)
        if labels is None:
            # Prometheus stores an empty label as no label; leave it out here too
            # (a GPU's `node` when the sidecar was not told its node).
            own = {k: v for k, v in zip(names, values, strict=True) if v}
            labels = {**self._identity, **own}
        self._current[key] = labels
        return labels


class _Families:
    """Metric families keyed by name, created on first sample from ``names.SPECS``."""

    def __init__(self, label_sets: LabelSets) -> None:
        self._label_sets = label_sets
        self._families: dict[str, tuple[Metric, tuple[str, ...]]] = {}

    def add(self, name: str, value: float, *labels: str) -> None:
        entry = self._families.get(name)
        if entry is None:
            spec = n.SPEC_BY_NAME[name]
            family: Metric
            if spec.kind == "counter":
                family = CounterMetricFamily(name, spec.help)
            else:
                family = GaugeMetricFamily(name, spec.help)
            entry = self._families[name] = (family, spec.labels)
        family, label_names = entry
        if len(labels) != len(label_names):
            raise ValueError(f"{name} takes labels {label_names}, got {labels}")
        # The exposition name: a counter's family drops `_total`, its samples keep it.
        family.samples.append(Sample(name, self._label_sets.get(label_names, labels), value))

    def metrics(self) -> list[Metric]:
        return [family for family, _ in self._families.values()]


def _add_gpus(
    f: _Families, snap: GpuSnapshot, assigned: int | None, age: float | None, node: str
) -> None:
    f.add(n.GPU_UP, 1.0 if snap.up else 0.0)
    f.add(n.GPU_DEVICES, float(sum(g.up for g in snap.gpus)))
    if assigned is not None:
        f.add(n.GPU_ASSIGNED_DEVICES, float(assigned))
    if age is not None:
        f.add(n.GPU_SAMPLE_AGE, age)
    if snap.driver_version:
        f.add(n.GPU_DRIVER_INFO, 1.0, snap.driver_version)
    for g in snap.gpus:
        _add_gpu(f, g, (str(g.index), g.uuid, g.model, node))


def _add_gpu(f: _Families, g: GpuReading, ids: tuple[str, ...]) -> None:
    """One GPU's series: a reading the device could not give has none."""
    f.add(n.GPU_DEVICE_UP, 1.0 if g.up else 0.0, *ids)
    optional: tuple[tuple[str, float | None], ...] = (
        (n.GPU_UTILIZATION, g.utilization_ratio),
        (n.GPU_MEMORY_UTILIZATION, g.memory_utilization_ratio),
        (n.GPU_MEMORY_USED, g.memory_used_bytes),
        (n.GPU_MEMORY_TOTAL, g.memory_total_bytes),
        (n.GPU_POWER, g.power_watts),
        (n.GPU_POWER_LIMIT, g.power_limit_watts),
        (n.GPU_ENERGY, g.energy_joules),
        (n.GPU_TEMPERATURE, g.temperature_celsius),
        (n.GPU_SM_CLOCK, g.sm_clock_hertz),
        (n.GPU_MEMORY_TEMPERATURE, g.memory_temperature_celsius),
        (n.GPU_MEMORY_CLOCK, g.memory_clock_hertz),
        (n.GPU_XID_ERRORS, g.xid_errors),
        (n.GPU_LAST_XID, g.last_xid),
        (n.GPU_PCIE_REPLAYS, g.pcie_replays),
    )
    for name, value in optional:
        if value is not None:
            f.add(name, float(value), *ids)
    _add_gpu_events(f, g, ids)
    if g.profiling_supported is not None:
        f.add(n.GPU_PROFILING_SUPPORTED, float(g.profiling_supported), *ids)
    for name, value in g.profiling:
        f.add(name, value, *ids)


def _add_gpu_events(f: _Families, g: GpuReading, ids: tuple[str, ...]) -> None:
    """Throttling, ECC and row remapping: the series labelled by their kind."""
    if g.clock_event_reasons is not None:
        supported = g.supported_clock_event_reasons
        for bit, reason in n.CLOCK_EVENT_REASONS:
            if supported is None or supported & bit:
                active = float(bool(g.clock_event_reasons & bit))
                f.add(n.GPU_CLOCK_EVENT_ACTIVE, active, *ids, reason)
    if g.ecc_corrected is not None:
        f.add(n.GPU_ECC_ERRORS, float(g.ecc_corrected), *ids, n.ECC_CORRECTED)
    if g.ecc_uncorrected is not None:
        f.add(n.GPU_ECC_ERRORS, float(g.ecc_uncorrected), *ids, n.ECC_UNCORRECTED)
    if (rows := g.remapped_rows) is not None:
        f.add(n.GPU_REMAPPED_ROWS, float(rows.corrected), *ids, n.ECC_CORRECTED)
        f.add(n.GPU_REMAPPED_ROWS, float(rows.uncorrected), *ids, n.ECC_UNCORRECTED)
        f.add(n.GPU_ROW_REMAP_PENDING, float(rows.pending), *ids)
        f.add(n.GPU_ROW_REMAP_FAILED, float(rows.failed), *ids)


def _add_training(f: _Families, view: TrainingView, now: float) -> None:
    f.add(n.TRAINING_UP, 1.0 if view.up else 0.0)
    if view.report_time is not None:
        # Exported even when stale: "how long has it been silent" is the question then.
        f.add(n.TRAINING_REPORT_TIMESTAMP, view.report_time)
        f.add(n.TRAINING_REPORT_AGE, max(0.0, now - view.report_time))
    p = view.progress
    if p is None:
        return
    values: tuple[tuple[str, float | None], ...] = (
        (n.TRAINING_STEP, p.step),
        (n.TRAINING_STEP_TARGET, p.total_steps),
        (n.TRAINING_SAMPLES, p.samples),
        (n.TRAINING_SAMPLES_PER_SECOND, p.samples_per_second),
        (n.TRAINING_LOSS, p.loss),
        (n.TRAINING_STEP_DURATION, p.step_seconds),
        (n.TRAINING_WORLD_SIZE, p.world_size),
        (n.TRAINING_RESTARTS, p.restarts),
        (n.TRAINING_CHECKPOINT_STEP, p.checkpoint_step),
        (n.TRAINING_CHECKPOINT_TIMESTAMP, p.checkpoint_time),
    )
    for name, value in values:
        if value is not None:
            f.add(name, float(value))
    if p.step is not None and p.total_steps:
        f.add(n.TRAINING_PROGRESS, min(1.0, max(0.0, p.step / p.total_steps)))
    if p.checkpoint_time is not None:
        f.add(n.TRAINING_CHECKPOINT_AGE, max(0.0, now - p.checkpoint_time))


def _add_rapl(f: _Families, snap: RaplSnapshot) -> None:
    f.add(n.CPU_ENERGY_UP, 1.0 if snap.up else 0.0)
    for zone in snap.zones:
        f.add(n.CPU_ENERGY, zone.joules, zone.zone, zone.name)


def check_identity(identity: Mapping[str, str]) -> None:
    """Refuse identity labels that Prometheus attaches itself. Purely computational."""
    reserved = sorted(n.RESERVED_TARGET_LABELS.intersection(identity))
    if reserved:
        raise ValueError(
            f"identity label(s) {reserved} are target labels that Prometheus attaches to every "
            f"series it scrapes; ours would be renamed exported_{reserved[0]}. Name the job with "
            f"{', '.join(n.IDENTITY_LABELS)} instead"
        )


def build_metrics(
    snapshot: Snapshot,
    identity: Mapping[str, str],
    version: str = __version__,
    label_sets: LabelSets | None = None,
    node: str | None = None,
) -> list[Metric]:
    """Turn one scrape's readings into metric families.

    Purely computational, apart from ``label_sets``, a cache the caller may
    keep across scrapes (it must have been made for the same ``identity``).
    """
    check_identity(identity)
    if label_sets is None:
        label_sets = LabelSets(identity)
    label_sets.new_scrape()
    f = _Families(label_sets)
    _add_gpus(f, snapshot.gpu, snapshot.assigned_gpus, snapshot.gpu_sample_age, node or "")
    _add_training(f, snapshot.training, snapshot.now)
    _add_rapl(f, snapshot.rapl)
    f.add(n.EXPORTER_BUILD_INFO, 1.0, version)
    for source in SOURCES:
        # Every source from 0 on, so increase() sees the first error too.
        f.add(n.EXPORTER_READ_ERRORS, float(snapshot.read_errors.get(source, 0)), source)
    if snapshot.last_collect_seconds is not None:
        f.add(n.EXPORTER_COLLECT_DURATION, snapshot.last_collect_seconds)
    return f.metrics()


class TrainopCollector:
    """A prometheus_client collector over the run dir, NVML and RAPL."""

    def __init__(
        self,
        *,
        run_dir: Path,
        gpu_reader: GpuReader,
        rapl_reader: RaplReader,
        identity: Mapping[str, str],
        node: str | None = None,
        all_gpus: bool = False,
        stale_after_seconds: float = DEFAULT_STALE_SECONDS,
        gpu_sample_stale_after_seconds: float = math.inf,
        clock: Callable[[], float] = time.time,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        check_identity(identity)  # at start-up, not as a failed scrape every 15 s
        self._progress_path = run_dir / contract.PROGRESS_FILE
        self._gpus_path = run_dir / contract.GPUS_FILE
        self._gpu_reader = gpu_reader
        self._rapl_reader = rapl_reader
        self._identity = dict(identity)
        self._node = node
        self._label_sets = LabelSets(identity)
        self._all_gpus = all_gpus
        self._stale_after = stale_after_seconds
        # A sampler stuck outside any one GPU's read (nvmlInit, enumeration) stops
        # sampling: its last readings are withdrawn once older than this.
        self._gpu_stale_after = gpu_sample_stale_after_seconds
        self._clock = clock
        self._timer = timer
        # Every key from the start: the sampler's thread and scrapes each count their
        # own sources, and a key added during a scrape's copy would break the copy.
        self._file_errors: Counter[str] = Counter(dict.fromkeys(SOURCES, 0))
        self._last_collect: float | None = None
        self._gpu_sample: GpuSample | None = None
        self.usage = UsageMeter()
        self._states = StateLog(log)
        # Concurrent scrapes (two Prometheus replicas) share the renderer's label cache.
        self._lock = threading.Lock()
        # A sample from a test and one from the sampler's thread must not interleave.
        self._sample_lock = threading.Lock()

    def sample_gpus(self) -> None:
        """Read the GPUs now; scrapes serve the latest sample.

        The sampler's thread calls this on its own clock (tests call it
        directly): it may block as long as NVML does, a scrape never does.
        """
        with self._sample_lock:
            wanted = self._read_gpus_file()
            gpu = self._guard(
                n.SOURCE_NVML, lambda: self._gpu_reader.read(wanted, all_gpus=self._all_gpus)
            )
            self._gpu_sample = GpuSample(
                gpu=gpu or GpuSnapshot(up=False),
                assigned=None if wanted is None else len(wanted),
                taken_at=self._timer(),
            )
            self.usage.add(
                self._gpu_sample.gpu, self._gpu_sample.assigned, self._gpu_sample.taken_at
            )

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            started = self._timer()
            metrics = build_metrics(
                self._snapshot(started),
                self._identity,
                label_sets=self._label_sets,
                node=self._node,
            )
            self._last_collect = self._timer() - started
        return metrics

    def close(self) -> None:
        with self._sample_lock:
            self._gpu_reader.close()

    def _snapshot(self, started: float) -> Snapshot:
        now = self._clock()
        rapl = self._guard(n.SOURCE_RAPL, self._rapl_reader.read)
        training = self._read_training(now)
        errors = Counter(self._file_errors)
        # The readers' own totals even when a read crashed: taking them from the
        # snapshot dropped the running count on a crash (2 -> 1 -> 3).
        errors[n.SOURCE_NVML] += self._gpu_reader.read_errors
        errors[n.SOURCE_RAPL] += self._rapl_reader.read_errors
        gpu, assigned, age = GpuSnapshot(up=False), None, None
        sample = self._gpu_sample  # one read: the sampler may replace it meanwhile
        if sample is not None:
            age = max(0.0, started - sample.taken_at)
            assigned = sample.assigned
            if age <= self._gpu_stale_after:
                gpu = sample.gpu
                self._states.clear("sample", "the GPU sampler is back")
            else:
                self._states.set(
                    "sample",
                    f"the last GPU sample is {age:.0f} s old (an NVML call outside any one "
                    "GPU's read hangs?): exporting trainop_gpu_up 0 and no GPU readings",
                    logging.ERROR,
                )
        return Snapshot(
            now=now,
            gpu=gpu,
            assigned_gpus=assigned,
            training=training,
            rapl=rapl or RaplSnapshot(up=False),
            read_errors=errors,
            last_collect_seconds=self._last_collect,
            gpu_sample_age=age,
        )

    def _guard(self, source: str, read: Callable[[], T]) -> T | None:
        try:
            value = read()
        except Exception:
            # A bug in one source must cost its own series, not the whole scrape
            # (a 500 would drop training metrics too) nor the process.
            self._states.set(
                f"crash/{source}",
                f"reading {source} failed (a bug; logged once until it works again)",
                logging.ERROR,
                exc_info=True,
            )
            self._file_errors[source] += 1
            return None
        self._states.clear(f"crash/{source}", f"reading {source} works again")
        return value

    def _read_gpus_file(self) -> tuple[str, ...] | None:
        try:
            uuids = visibility.parse_gpus_file(self._gpus_path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            self._file_errors[n.SOURCE_GPUS_FILE] += 1
            self._states.set("gpus_file", f"cannot use {self._gpus_path}: {err}")
            return None
        self._states.clear("gpus_file", f"{self._gpus_path} is readable again")
        return uuids

    def _read_training(self, now: float) -> TrainingView:
        path = self._progress_path
        progress = None
        mtime = None
        try:
            mtime = path.stat().st_mtime
            progress, rejected = parse_progress(path.read_text())
        except FileNotFoundError:
            self._states.set(
                "training", f"waiting for the trainer's first report in {path}", logging.INFO
            )
        except (OSError, ValueError) as err:
            # ValueError covers torn JSON and undecodable bytes.
            self._file_errors[n.SOURCE_PROGRESS] += 1
            self._states.set("training", f"cannot parse {path} ({err}): training_up 0")
        else:
            if rejected:
                self._states.set("rejected", f"ignoring {path} keys of the wrong type: {rejected}")
            else:
                self._states.clear("rejected", f"{path} keys all valid again")
        view = assess_progress(progress, file_mtime=mtime, now=now, stale_after=self._stale_after)
        if view.up:
            self._states.clear("training", "trainer progress is being reported")
        elif progress is not None:
            self._states.set("training", f"{path}: {view.reason}: training_up 0")
        return view

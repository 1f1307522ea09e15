"""GPU readings from NVML, with NVML's lifecycle handled once, here.

NVML is initialised once and device handles are cached; a read that says the
GPU is lost triggers a shutdown + init before the next read, then at most
once per rescan interval while it stays lost. When NVML
cannot start (no driver, no library, no nvidia-ml-py) the reader says why once
and retries now and then, so the sidecar keeps serving training metrics and
never crash-loops on a node without a GPU.

Each GPU is read on a thread of its own, given up on after the read timeout:
an NVML call can hang in the driver (a GPU falling off the bus), and one stuck
GPU must cost only its own readings. It is reported down, and not asked again,
until the stuck call returns.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, TypeVar

from trainop.exporter import names as n
from trainop.exporter import visibility
from trainop.exporter.nvml import EventSet, GpmSample, Handle, Nvml, NvmlError, RemappedRows
from trainop.exporter.statelog import StateLog

log = logging.getLogger(__name__)

T = TypeVar("T")

ALL_CLOCK_EVENT_REASONS = sum(bit for bit, _ in n.CLOCK_EVENT_REASONS)
MW_PER_W = 1000.0
MJ_PER_J = 1000.0
HZ_PER_MHZ = 1_000_000.0
RATIO_PER_PERCENT = 0.01
BYTES_PER_MIB = 1024.0 * 1024.0

# Profiling metrics from NVML's GPM API: (metric, pynvml's id constant, factor from
# NVML's unit to ours). NVML's NVLink figures are over all of the GPU's links.
GPM_METRICS: Final[tuple[tuple[str, str, float], ...]] = (
    (n.GPU_SM_ACTIVE, "NVML_GPM_METRIC_SM_UTIL", RATIO_PER_PERCENT),
    (n.GPU_SM_OCCUPANCY, "NVML_GPM_METRIC_SM_OCCUPANCY", RATIO_PER_PERCENT),
    (n.GPU_TENSOR_ACTIVE, "NVML_GPM_METRIC_ANY_TENSOR_UTIL", RATIO_PER_PERCENT),
    (n.GPU_DRAM_ACTIVE, "NVML_GPM_METRIC_DRAM_BW_UTIL", RATIO_PER_PERCENT),
    (n.GPU_FP16_ACTIVE, "NVML_GPM_METRIC_FP16_UTIL", RATIO_PER_PERCENT),
    (n.GPU_FP32_ACTIVE, "NVML_GPM_METRIC_FP32_UTIL", RATIO_PER_PERCENT),
    (n.GPU_FP64_ACTIVE, "NVML_GPM_METRIC_FP64_UTIL", RATIO_PER_PERCENT),
    (n.GPU_PCIE_TRANSMIT, "NVML_GPM_METRIC_PCIE_TX_PER_SEC", BYTES_PER_MIB),
    (n.GPU_PCIE_RECEIVE, "NVML_GPM_METRIC_PCIE_RX_PER_SEC", BYTES_PER_MIB),
    (n.GPU_NVLINK_TRANSMIT, "NVML_GPM_METRIC_NVLINK_TOTAL_TX_PER_SEC", BYTES_PER_MIB),
    (n.GPU_NVLINK_RECEIVE, "NVML_GPM_METRIC_NVLINK_TOTAL_RX_PER_SEC", BYTES_PER_MIB),
)
# The `_Device.unsupported` key for GPM as a whole; one metric's is PROFILING/<metric>.
PROFILING = "profiling"


@dataclass(frozen=True)
class GpuReading:
    """One GPU on one scrape, in base units; None where the device cannot say."""

    index: int
    uuid: str
    model: str
    utilization_ratio: float | None = None
    memory_utilization_ratio: float | None = None
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    power_watts: float | None = None
    power_limit_watts: float | None = None
    energy_joules: float | None = None
    temperature_celsius: float | None = None
    sm_clock_hertz: float | None = None
    memory_temperature_celsius: float | None = None
    memory_clock_hertz: float | None = None
    clock_event_reasons: int | None = None
    # Bits the device can report; series for other reasons would be a guess.
    supported_clock_event_reasons: int | None = None
    ecc_corrected: int | None = None
    ecc_uncorrected: int | None = None
    xid_errors: int | None = None
    last_xid: int | None = None
    remapped_rows: RemappedRows | None = None
    pcie_replays: int | None = None
    # None until known; False for a GPU without GPM (then `profiling` stays empty).
    profiling_supported: bool | None = None
    # (metric name, value in base units) for each GPM metric read on this pass.
    profiling: tuple[tuple[str, float], ...] = ()
    # False: the GPU could not be read on this pass (lost, or a call to it hangs);
    # every reading is then None.
    up: bool = True


@dataclass(frozen=True)
class GpuSnapshot:
    up: bool
    driver_version: str | None = None
    gpus: tuple[GpuReading, ...] = ()


@dataclass
class _Gpm:
    """A GPU's two GPM samples: ``before`` holds the last pass's counters once ``taken``."""

    before: GpmSample
    after: GpmSample
    taken: bool = False

    def free(self, nvml: Nvml) -> None:
        nvml.gpm_free(self.before)
        nvml.gpm_free(self.after)


@dataclass
class _Device:
    handle: Handle
    index: int
    uuid: str
    model: str
    unsupported: set[str] = field(default_factory=set)
    xid_events: EventSet | None = None
    supported_reasons: int | None = None  # asked once per device
    gpm_supported: bool | None = None  # asked once per device
    gpm: _Gpm | None = None
    # A read that outlived the timeout and is still inside NVML.
    stuck_read: threading.Thread | None = None

    def down(self) -> GpuReading:
        return GpuReading(index=self.index, uuid=self.uuid, model=self.model, up=False)

    def stuck(self) -> bool:
        return self.stuck_read is not None and self.stuck_read.is_alive()


class _GpuLostError(Exception):
    pass


class _GpuStuckError(Exception):
    pass


@dataclass
class _XidTally:
    count: int = 0
    last: int = 0


class GpuReader:
    """Reads the selected GPUs; every public call is safe on a machine without GPUs."""

    def __init__(
        self,
        open_nvml: Callable[[], Nvml],
        *,
        monotonic: Callable[[], float],
        retry_seconds: float = 30.0,
        rescan_seconds: float = 120.0,
        read_timeout_seconds: float = 5.0,
    ) -> None:
        self._open_nvml = open_nvml
        self._monotonic = monotonic
        self._retry_seconds = retry_seconds
        # nvmlInit takes seconds on a node without persistence mode, and it holds up
        # the sampler's pass, every GPU's next reading: looking for a missing GPU
        # must stay rare.
        self._rescan_seconds = rescan_seconds
        # Per GPU and pass. Real reads take milliseconds; this only has to tell a
        # hang from a slow call on a busy node.
        self._read_timeout = read_timeout_seconds
        self._nvml: Nvml | None = None
        self._driver_version: str | None = None
        self._devices: dict[str, _Device] = {}
        self._next_init_at = 0.0
        self._next_rescan_at = 0.0
        self._reinit = False
        self._errors = 0
        # A timed-out read goes on counting on its own thread.
        self._errors_lock = threading.Lock()
        # Kept across re-inits: a counter must not reset because NVML did.
        self._xids: dict[str, _XidTally] = {}
        self._states = StateLog(log)

    # --- lifecycle -----------------------------------------------------------
    def _start(self) -> Nvml | None:
        # Never shut NVML down under a call still inside it: wait until that returns.
        if self._reinit and not self._any_stuck():
            self._stop()
            self._reinit = False
        if self._nvml is not None:
            return self._nvml
        now = self._monotonic()
        if now < self._next_init_at:
            return None
        try:
            nvml = self._open_nvml()
            nvml.init()
        except NvmlError as err:
            self._next_init_at = now + self._retry_seconds
            if err.absent:
                self._states.set(
                    "init",
                    f"No usable NVIDIA GPU here ({err}): exporting trainop_gpu_up 0 and "
                    f"training metrics only; retrying every {self._retry_seconds:.0f} s",
                )
            else:
                self._states.set("init", f"NVML failed to start ({err}); retrying")
            return None
        self._nvml = nvml
        try:
            self._driver_version = nvml.driver_version()
        except NvmlError:
            self._driver_version = None
        self._devices = self._enumerate(nvml)
        self._states.clear("init", "NVML works again")
        log.info(
            "NVML started: %d GPU(s) on this node, driver %s",
            len(self._devices),
            self._driver_version or "unknown",
        )
        return nvml

    def _enumerate(self, nvml: Nvml) -> dict[str, _Device]:
        devices: dict[str, _Device] = {}
        try:
            count = nvml.device_count()
        except NvmlError as err:
            self._states.set("enumerate", f"NVML cannot count GPUs: {err}")
            return devices
        for i in range(count):
            try:
                handle = nvml.handle(i)
                uuid = nvml.uuid(handle)
                model = nvml.name(handle)
                index = nvml.index(handle)
            except NvmlError as err:
                # One broken GPU on the node must not hide this pod's healthy ones.
                self._states.set(f"enumerate/{i}", f"skipping GPU {i}: {err}")
                continue
            devices[uuid] = _Device(handle=handle, index=index, uuid=uuid, model=model)
        return devices

    def _stop(self) -> None:
        nvml, self._nvml = self._nvml, None
        if nvml is None:
            return
        for device in self._devices.values():
            if device.xid_events is not None:
                nvml.close_events(device.xid_events)
            if device.gpm is not None:
                device.gpm.free(nvml)
        self._devices = {}
        try:
            nvml.shutdown()
        except NvmlError as err:
            log.debug("nvmlShutdown failed (ignored): %s", err)

    def close(self) -> None:
        if self._any_stuck():
            # nvmlShutdown would wait for the stuck call and hold up the pod's exit.
            log.warning("an NVML call is stuck: exiting without nvmlShutdown")
            return
        self._stop()

    def _any_stuck(self) -> bool:
        return any(d.stuck() for d in self._devices.values())

    def _count_error(self) -> None:
        with self._errors_lock:
            self._errors += 1

    @property
    def read_errors(self) -> int:
        """Failed NVML reads so far; a counter, so it never goes down, whatever read() raised."""
        return self._errors

    # --- reads ---------------------------------------------------------------
    def read(self, wanted: tuple[str, ...] | None, *, all_gpus: bool) -> GpuSnapshot:
        """Read the GPUs chosen by ``visibility.select_gpus``."""
        nvml = self._start()
        if nvml is None:
            if wanted:
                self._states.set(
                    "blind",
                    f"the trainer sees {len(wanted)} GPU(s) but this sidecar cannot use NVML: "
                    "the NVIDIA container toolkit must honour NVIDIA_VISIBLE_DEVICES=all for "
                    "it (see trainop/exporter/README.md)",
                )
            return GpuSnapshot(up=False)
        self._states.clear("blind", "NVML is usable in this sidecar now")
        selection = visibility.select_gpus(list(self._devices), wanted, all_gpus=all_gpus)
        if wanted is None and not all_gpus:
            self._states.set(
                "selection",
                "gpus.json is absent or unreadable: exporting no GPU metrics until the "
                "trainer writes it (--all-gpus exports every GPU of the node)",
            )
        elif not wanted and not all_gpus:
            self._states.set(
                "selection",
                "gpus.json lists no GPU (a CPU-only trainer, or one that could not name its "
                "GPUs by UUID): exporting no GPU metrics",
                logging.INFO,
            )
        elif selection.missing:
            self._states.set(
                "selection",
                f"GPUs in gpus.json not visible to NVML here: {', '.join(selection.missing)} "
                "(is NVIDIA_VISIBLE_DEVICES=all set on the sidecar? MIG devices are not "
                "supported yet)",
            )
        else:
            self._states.clear(
                "selection", f"exporting {len(selection.exported)} GPU(s) of this pod"
            )

        if any(not u.upper().startswith("MIG-") for u in selection.missing):
            self._schedule_rescan()

        readings: list[GpuReading] = []
        lost = False
        for uuid in selection.exported:
            device = self._devices[uuid]
            try:
                readings.append(self._read_in_time(nvml, device))
            except _GpuLostError:
                lost = True
                readings.append(device.down())
            except _GpuStuckError:
                readings.append(device.down())
        if lost:
            # A GPU that stays lost but enumerated would otherwise cost an
            # nvmlInit on every pass.
            self._schedule_rescan()
        readings.sort(key=lambda r: r.index)
        up = bool(readings) and all(r.up for r in readings) and not selection.missing
        return GpuSnapshot(
            up=up,
            driver_version=self._driver_version,
            gpus=tuple(readings),
        )

    def _schedule_rescan(self) -> None:
        # A GPU back from a reset only shows up in a fresh enumeration; re-init
        # is slow on some nodes, so at most once per rescan interval, whether a
        # GPU is missing or lost.
        now = self._monotonic()
        if now >= self._next_rescan_at:
            self._next_rescan_at = now + self._rescan_seconds
            self._reinit = True

    def _field(self, device: _Device, name: str, fn: Callable[[], T]) -> T | None:
        if name in device.unsupported:
            return None
        try:
            return fn()
        except NvmlError as err:
            if err.lost:
                self._states.set(
                    f"lost/{device.uuid}",
                    f"GPU {device.index} ({device.uuid}) is lost ({err}); re-initialising "
                    f"NVML, then at most every {self._rescan_seconds:.0f} s while it stays lost",
                    logging.ERROR,
                )
                raise _GpuLostError from err
            if err.unsupported:
                # Asked once: not supported stays not supported for a device.
                device.unsupported.add(name)
                log.info("GPU %d does not report %s (%s)", device.index, name, err.name)
                return None
            self._count_error()
            self._states.set(f"field/{device.uuid}/{name}", f"GPU {device.index} {name}: {err}")
            return None

    def _read_in_time(self, nvml: Nvml, d: _Device) -> GpuReading:
        """``_read_device`` on its own thread, given up on after the read timeout."""
        if d.stuck_read is not None:
            if d.stuck_read.is_alive():
                raise _GpuStuckError
            d.stuck_read = None
            self._states.clear(f"stuck/{d.uuid}", f"GPU {d.index} ({d.uuid}) answers again")
        result: list[GpuReading] = []
        failure: list[Exception] = []

        def read() -> None:
            try:
                result.append(self._read_device(nvml, d))
            except Exception as err:  # handed to the sampler's thread below
                failure.append(err)

        thread = threading.Thread(target=read, name=f"trainop-nvml-gpu{d.index}", daemon=True)
        thread.start()
        thread.join(self._read_timeout)
        if thread.is_alive():
            d.stuck_read = thread
            self._count_error()
            self._states.set(
                f"stuck/{d.uuid}",
                f"GPU {d.index} ({d.uuid}): an NVML call has not returned in "
                f"{self._read_timeout:g} s; reporting this GPU down, and not asking it again, "
                "until the call returns (a GPU hung in the driver: see its XIDs in dmesg)",
                logging.ERROR,
            )
            raise _GpuStuckError
        if failure:
            raise failure[0]
        return result[0]

    def _read_device(self, nvml: Nvml, d: _Device) -> GpuReading:
        h = d.handle
        util = self._field(d, "utilization", lambda: nvml.utilization(h))
        memory = self._field(d, "memory", lambda: nvml.memory(h))
        power = self._field(d, "power", lambda: nvml.power_mw(h))
        limit = self._field(d, "power_limit", lambda: nvml.power_limit_mw(h))
        energy = self._field(d, "energy", lambda: nvml.energy_mj(h))
        temperature = self._field(d, "temperature", lambda: nvml.temperature_c(h))
        clock = self._field(d, "sm_clock", lambda: nvml.sm_clock_mhz(h))
        mem_temperature = self._field(d, "memory_temperature", lambda: nvml.memory_temperature_c(h))
        mem_clock = self._field(d, "memory_clock", lambda: nvml.memory_clock_mhz(h))
        reasons = self._field(d, "clock_event_reasons", lambda: nvml.clock_event_reasons(h))
        if reasons is not None and d.supported_reasons is None:
            supported = self._field(
                d, "supported_clock_event_reasons", lambda: nvml.supported_clock_event_reasons(h)
            )
            d.supported_reasons = ALL_CLOCK_EVENT_REASONS if supported is None else supported
        ecc_c = self._field(d, "ecc", lambda: nvml.ecc_volatile_errors(h, uncorrected=False))
        ecc_u = self._field(d, "ecc", lambda: nvml.ecc_volatile_errors(h, uncorrected=True))
        remapped = self._field(d, "remapped_rows", lambda: nvml.remapped_rows(h))
        replays = self._field(d, "pcie_replays", lambda: nvml.pcie_replays(h))
        xids = self._read_xids(nvml, d)
        profiling = self._read_profiling(nvml, d)
        self._states.clear(f"lost/{d.uuid}", f"GPU {d.index} ({d.uuid}) is back")
        return GpuReading(
            index=d.index,
            uuid=d.uuid,
            model=d.model,
            utilization_ratio=util.gpu_percent / 100.0 if util else None,
            memory_utilization_ratio=util.memory_percent / 100.0 if util else None,
            memory_used_bytes=memory.used_bytes if memory else None,
            memory_total_bytes=memory.total_bytes if memory else None,
            power_watts=power / MW_PER_W if power is not None else None,
            power_limit_watts=limit / MW_PER_W if limit is not None else None,
            energy_joules=energy / MJ_PER_J if energy is not None else None,
            temperature_celsius=float(temperature) if temperature is not None else None,
            sm_clock_hertz=clock * HZ_PER_MHZ if clock is not None else None,
            memory_temperature_celsius=mem_temperature,
            memory_clock_hertz=mem_clock * HZ_PER_MHZ if mem_clock is not None else None,
            clock_event_reasons=reasons,
            supported_clock_event_reasons=d.supported_reasons,
            ecc_corrected=ecc_c,
            ecc_uncorrected=ecc_u,
            xid_errors=xids.count if xids else None,
            last_xid=xids.last if xids else None,
            remapped_rows=remapped,
            pcie_replays=replays,
            profiling_supported=d.gpm_supported,
            profiling=profiling,
        )

    def _read_xids(self, nvml: Nvml, d: _Device) -> _XidTally | None:
        if d.xid_events is None:
            opened = self._field(d, "xid", lambda: nvml.open_xid_events(d.handle))
            if opened is None:
                return None
            d.xid_events = opened
        events = d.xid_events
        codes = self._field(d, "xid", lambda: nvml.drain_xid_events(events))
        if codes is None:
            return None
        tally = self._xids.setdefault(d.uuid, _XidTally())
        for code in codes:
            tally.count += 1
            tally.last = code
            log.error("GPU %d (%s) reported XID %d", d.index, d.uuid, code)
        return tally

    def _read_profiling(self, nvml: Nvml, d: _Device) -> tuple[tuple[str, float], ...]:
        """GPM metrics over the interval since this GPU's previous pass.

        GPM compares two snapshots of a GPU's counters, so each pass takes one and
        reads the interval since the pass before: nothing on the first pass, then
        averages over the sampler's interval. A GPU without GPM is found out once
        (``d.gpm_supported`` False) and not asked again.
        """
        if d.gpm_supported is None:
            supported = self._field(d, PROFILING, lambda: nvml.gpm_supported(d.handle))
            if supported is None and PROFILING not in d.unsupported:
                return ()  # a transient failure: ask again on the next pass
            if supported is False:
                log.info(
                    "GPU %d (%s) has no GPM profiling (Hopper and newer have it): no SM, "
                    "tensor, DRAM, PCIe or NVLink activity series, "
                    "trainop_gpu_profiling_supported 0",
                    d.index,
                    d.model,
                )
            d.gpm_supported = bool(supported)
        if not d.gpm_supported:
            return ()
        gpm = d.gpm or self._alloc_gpm(nvml, d)
        if gpm is None:
            return self._profiling_failed(nvml, d)
        if self._field(d, PROFILING, lambda: nvml.gpm_sample(d.handle, gpm.after)) is None:
            return self._profiling_failed(nvml, d)
        values: dict[str, float | NvmlError] | None = {}
        wanted = [m for m in GPM_METRICS if f"{PROFILING}/{m[0]}" not in d.unsupported]
        if gpm.taken and wanted:
            values = self._field(
                d,
                PROFILING,
                lambda: nvml.gpm_metrics(gpm.before, gpm.after, [c for _, c, _ in wanted]),
            )
        # The sample just taken is the next pass's "before", whatever the metrics did.
        gpm.before, gpm.after, gpm.taken = gpm.after, gpm.before, True
        if values is None:
            return self._profiling_failed(nvml, d)
        out: list[tuple[str, float]] = []
        for metric, constant, factor in wanted:
            value = values.get(constant)
            if isinstance(value, float):
                out.append((metric, value * factor))
            elif value is not None and value.unsupported:
                # NVLink metrics on a PCIe board, say: that series alone is absent.
                d.unsupported.add(f"{PROFILING}/{metric}")
                log.info("GPU %d does not report %s (%s)", d.index, metric, value.name)
            elif value is not None:
                self._count_error()
                self._states.set(f"field/{d.uuid}/{metric}", f"GPU {d.index} {metric}: {value}")
        return tuple(out)

    def _alloc_gpm(self, nvml: Nvml, d: _Device) -> _Gpm | None:
        before = self._field(d, PROFILING, nvml.gpm_alloc)
        if before is None:
            return None
        after = self._field(d, PROFILING, nvml.gpm_alloc)
        if after is None:
            nvml.gpm_free(before)
            return None
        d.gpm = _Gpm(before, after)
        return d.gpm

    def _profiling_failed(self, nvml: Nvml, d: _Device) -> tuple[tuple[str, float], ...]:
        # `_field` logged and counted it; an unsupported GPM is off for this GPU for good.
        if PROFILING in d.unsupported:
            d.gpm_supported = False
            if d.gpm is not None:
                d.gpm.free(nvml)
                d.gpm = None
        return ()

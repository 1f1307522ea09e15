"""FakeNVML: a test double for the ``pynvml`` module, with no GPU behind it.

It is NOT a GPU reader. It exposes the same module-level functions the
exporter calls (``nvmlInit``, ``nvmlDeviceGetPowerUsage``...), in NVML's units,
and fails the way real NVML fails, raising pynvml's own exception classes:

- calls before ``nvmlInit`` or after ``nvmlShutdown`` raise ``Uninitialized``;
- ``init_error="LibraryNotFound"`` models a node without the driver;
- ``FakeGpu.errors`` makes chosen calls raise, e.g. ``NotSupported``;
- ``lose(uuid)`` makes every call on that device raise ``GpuIsLost``, and the
  device is missing from enumeration after the next init, as when a GPU falls
  off the bus; ``recover(uuid)`` brings it back;
- ``hang(uuid)`` makes every call on that device block until ``release(uuid)``,
  as a call stuck in the driver does;
- XID events queue only on event sets registered before they happen;
- GPM (profiling) needs two samples of the same device, taken in order; a GPU
  with ``gpm_supported=False`` (one before Hopper) says so and refuses samples,
  and a metric whose rate is None (NVLink on a PCIe board) comes back
  NotSupported on its own. The rates over an interval are those the GPU had
  when the later sample was taken (real GPM averages hardware counters).
- ``SteeredFakeNVML`` takes the same controls from a JSON file, for a test that
  steers a sidecar process it started (``--fake-nvml-control``).

Used by the tests, the benchmark and ``--fake-nvml-gpus`` (demos without a GPU).
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pynvml

NVMLError = pynvml.NVMLError
NVML_TEMPERATURE_GPU = pynvml.NVML_TEMPERATURE_GPU
NVML_CLOCK_SM = pynvml.NVML_CLOCK_SM
NVML_CLOCK_MEM = pynvml.NVML_CLOCK_MEM

GIB = 1024**3


def nvml_error(name: str) -> Exception:
    """pynvml's real exception for ``name``, e.g. ``nvml_error("GpuIsLost")``."""
    cls: type[Exception] = getattr(pynvml, f"NVMLError_{name}")
    return cls()


# eq=False: two devices with equal readings are still two devices.
@dataclass(eq=False)
class FakeGpu:
    """One device as NVML would report it (NVML units: mW, mJ, MHz, percent)."""

    uuid: str
    name: str = "NVIDIA H100 80GB HBM3"
    gpu_util_percent: int = 0
    mem_util_percent: int = 0
    memory_used_bytes: int = 0
    memory_total_bytes: int = 80 * GIB
    power_mw: int = 70_000
    power_limit_mw: int = 700_000
    energy_mj: int = 0
    temperature_c: int = 35
    sm_clock_mhz: int = 1980
    mem_clock_mhz: int = 2619  # HBM3 on an H100 SXM
    # None: a board without a memory sensor (its field value reads NotSupported).
    memory_temperature_c: int | None = 38
    clock_event_reasons: int = 0
    # What the device can report at all: by default 7 of the 9 bits, so tests
    # see a device that cannot report every reason.
    supported_clock_event_reasons: int = 0x0EF
    ecc_corrected: int = 0
    ecc_uncorrected: int = 0
    remapped_rows_corrected: int = 0
    remapped_rows_uncorrected: int = 0
    row_remap_pending: bool = False
    row_remap_failed: bool = False
    pcie_replays: int = 0
    # GPM profiling rates, in NVML's units (percent, MiB/s).
    gpm_supported: bool = True
    sm_active_percent: float = 0.0
    sm_occupancy_percent: float = 0.0
    tensor_active_percent: float = 0.0
    dram_active_percent: float = 0.0
    fp16_active_percent: float = 0.0
    fp32_active_percent: float = 0.0
    fp64_active_percent: float = 0.0
    pcie_tx_mib_per_s: float = 0.0
    pcie_rx_mib_per_s: float = 0.0
    nvlink_tx_mib_per_s: float | None = 0.0
    nvlink_rx_mib_per_s: float | None = 0.0
    # pynvml function -> error it raises, e.g. {"nvmlDeviceGetPowerUsage": "NoPermission"}
    errors: dict[str, str] = field(default_factory=dict)
    lost: bool = False
    # Cleared by FakeNVML.hang(): calls on the device block until it is set again.
    answering: threading.Event = field(default_factory=lambda: _set(threading.Event()))


def _set(event: threading.Event) -> threading.Event:
    event.set()
    return event


# The GPM metric ids the fake models -> the FakeGpu rate behind each.
_GPM_RATES: dict[int, str] = {
    pynvml.NVML_GPM_METRIC_SM_UTIL: "sm_active_percent",
    pynvml.NVML_GPM_METRIC_SM_OCCUPANCY: "sm_occupancy_percent",
    pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL: "tensor_active_percent",
    pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL: "dram_active_percent",
    pynvml.NVML_GPM_METRIC_FP16_UTIL: "fp16_active_percent",
    pynvml.NVML_GPM_METRIC_FP32_UTIL: "fp32_active_percent",
    pynvml.NVML_GPM_METRIC_FP64_UTIL: "fp64_active_percent",
    pynvml.NVML_GPM_METRIC_PCIE_TX_PER_SEC: "pcie_tx_mib_per_s",
    pynvml.NVML_GPM_METRIC_PCIE_RX_PER_SEC: "pcie_rx_mib_per_s",
    pynvml.NVML_GPM_METRIC_NVLINK_TOTAL_TX_PER_SEC: "nvlink_tx_mib_per_s",
    pynvml.NVML_GPM_METRIC_NVLINK_TOTAL_RX_PER_SEC: "nvlink_rx_mib_per_s",
}


@dataclass(eq=False)
class _Handle:
    gpu: FakeGpu


@dataclass(eq=False)
class _GpmSample:
    """What a GPM sample holds once taken: whose it is, when, and the rates then."""

    gpu: FakeGpu | None = None
    taken: int = 0  # order of nvmlGpmSampleGet calls; 0 = never filled
    rates: dict[int, float] = field(default_factory=dict)
    freed: bool = False


@dataclass(eq=False)
class _EventSet:
    gpus: list[FakeGpu] = field(default_factory=list)
    queue: list[tuple[FakeGpu, int]] = field(default_factory=list)
    freed: bool = False


@dataclass(frozen=True)
class _Rates:
    gpu: int
    memory: int


@dataclass(frozen=True)
class _MemInfo:
    total: int
    free: int
    used: int


@dataclass(frozen=True)
class _EventData:
    device: _Handle
    eventType: int  # noqa: N815  # pynvml's field name
    eventData: int  # noqa: N815  # pynvml's field name


class FakeNVML:
    """Stands in for the ``pynvml`` module; see the module docstring."""

    NVMLError = pynvml.NVMLError

    def __init__(
        self,
        gpus: list[FakeGpu],
        *,
        init_error: str | None = None,
        driver_version: str = "550.54.15",
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.gpus = list(gpus)
        self.init_error = init_error
        self.driver_version = driver_version
        # With a clock, each GPU's energy counter advances at its power draw,
        # like a device under a steady load; without one it moves only by hand.
        self._clock = clock
        self._clock_start = clock() if clock else 0.0
        self.calls: Counter[str] = Counter()
        self.device_calls: Counter[tuple[str, str]] = Counter()  # (function, uuid)
        self._initialised = False
        self._enumerated: list[FakeGpu] = []
        self._event_sets: list[_EventSet] = []
        # A sample handle is a pointer (pynvml's c_nvmlGpmSample_t) whose address is only
        # a key in here: nothing dereferences it, as with NVML's own opaque samples.
        self._gpm_samples: dict[int, _GpmSample] = {}
        self._gpm_taken = 0

    # --- test controls -----------------------------------------------------
    def gpu(self, uuid: str) -> FakeGpu:
        return next(g for g in self.gpus if g.uuid == uuid)

    def lose(self, uuid: str) -> None:
        self.gpu(uuid).lost = True

    def recover(self, uuid: str) -> None:
        self.gpu(uuid).lost = False

    def hang(self, uuid: str) -> None:
        self.gpu(uuid).answering.clear()

    def release(self, uuid: str) -> None:
        self.gpu(uuid).answering.set()

    def inject_xid(self, uuid: str, xid: int) -> None:
        gpu = self.gpu(uuid)
        for event_set in self._event_sets:
            if gpu in event_set.gpus and not event_set.freed:
                event_set.queue.append((gpu, xid))

    # --- helpers -------------------------------------------------------------
    def _enter(self, fn: str) -> None:
        self.calls[fn] += 1
        if not self._initialised:
            raise nvml_error("Uninitialized")

    def _device(self, fn: str, handle: object) -> FakeGpu:
        self._enter(fn)
        if not isinstance(handle, _Handle) or handle.gpu not in self._enumerated:
            raise nvml_error("InvalidArgument")
        return self._on(fn, handle.gpu)

    def _on(self, fn: str, gpu: FakeGpu) -> FakeGpu:
        """A call reaching ``gpu``: it may hang, find it lost, or fail as told."""
        self.device_calls[fn, gpu.uuid] += 1
        gpu.answering.wait()
        if gpu.lost:
            raise nvml_error("GpuIsLost")
        if fn in gpu.errors:
            raise nvml_error(gpu.errors[fn])
        return gpu

    # --- the pynvml surface ------------------------------------------------
    def nvmlInit(self) -> None:  # noqa: N802  # pynvml's names
        self.calls["nvmlInit"] += 1
        if self.init_error:
            raise nvml_error(self.init_error)
        self._initialised = True
        self._enumerated = [g for g in self.gpus if not g.lost]

    def nvmlShutdown(self) -> None:  # noqa: N802
        self._enter("nvmlShutdown")
        self._initialised = False
        for event_set in self._event_sets:
            event_set.freed = True
        for sample in self._gpm_samples.values():
            sample.freed = True

    def nvmlSystemGetDriverVersion(self) -> str:  # noqa: N802
        self._enter("nvmlSystemGetDriverVersion")
        return self.driver_version

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        self._enter("nvmlDeviceGetCount")
        return len(self._enumerated)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> _Handle:  # noqa: N802
        self._enter("nvmlDeviceGetHandleByIndex")
        if not 0 <= index < len(self._enumerated):
            raise nvml_error("InvalidArgument")
        return _Handle(self._enumerated[index])

    def nvmlDeviceGetIndex(self, handle: object) -> int:  # noqa: N802
        gpu = self._device("nvmlDeviceGetIndex", handle)
        return self._enumerated.index(gpu)

    def nvmlDeviceGetUUID(self, handle: object) -> str:  # noqa: N802
        return self._device("nvmlDeviceGetUUID", handle).uuid

    def nvmlDeviceGetName(self, handle: object) -> str:  # noqa: N802
        return self._device("nvmlDeviceGetName", handle).name

    def nvmlDeviceGetUtilizationRates(self, handle: object) -> _Rates:  # noqa: N802
        gpu = self._device("nvmlDeviceGetUtilizationRates", handle)
        return _Rates(gpu=gpu.gpu_util_percent, memory=gpu.mem_util_percent)

    def nvmlDeviceGetMemoryInfo(self, handle: object) -> _MemInfo:  # noqa: N802
        gpu = self._device("nvmlDeviceGetMemoryInfo", handle)
        free = gpu.memory_total_bytes - gpu.memory_used_bytes
        return _MemInfo(total=gpu.memory_total_bytes, free=free, used=gpu.memory_used_bytes)

    def nvmlDeviceGetPowerUsage(self, handle: object) -> int:  # noqa: N802
        return self._device("nvmlDeviceGetPowerUsage", handle).power_mw

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: object) -> int:  # noqa: N802
        return self._device("nvmlDeviceGetEnforcedPowerLimit", handle).power_limit_mw

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: object) -> int:  # noqa: N802
        gpu = self._device("nvmlDeviceGetTotalEnergyConsumption", handle)
        if self._clock is None:
            return gpu.energy_mj
        elapsed = self._clock() - self._clock_start
        return gpu.energy_mj + int(gpu.power_mw * elapsed)

    def nvmlDeviceGetTemperature(self, handle: object, sensor: int) -> int:  # noqa: N802
        gpu = self._device("nvmlDeviceGetTemperature", handle)
        if sensor != NVML_TEMPERATURE_GPU:
            raise nvml_error("InvalidArgument")
        return gpu.temperature_c

    def nvmlDeviceGetClockInfo(self, handle: object, clock_type: int) -> int:  # noqa: N802
        gpu = self._device("nvmlDeviceGetClockInfo", handle)
        if clock_type == NVML_CLOCK_SM:
            return gpu.sm_clock_mhz
        if clock_type == NVML_CLOCK_MEM:
            return gpu.mem_clock_mhz
        raise nvml_error("InvalidArgument")

    def nvmlDeviceGetFieldValues(  # noqa: N802
        self, handle: object, field_ids: list[int]
    ) -> ctypes.Array[Any]:
        """pynvml's own structs, each field with its own status, as the library fills them.

        Only the memory temperature is modelled; other fields read NotSupported.
        """
        gpu = self._device("nvmlDeviceGetFieldValues", handle)
        values: ctypes.Array[Any] = (pynvml.c_nvmlFieldValue_t * len(field_ids))()
        for value, field_id in zip(values, field_ids, strict=True):
            value.fieldId = field_id
            if field_id == pynvml.NVML_FI_DEV_MEMORY_TEMP and gpu.memory_temperature_c is not None:
                value.nvmlReturn = pynvml.NVML_SUCCESS
                value.valueType = pynvml.NVML_VALUE_TYPE_UNSIGNED_INT
                value.value.uiVal = gpu.memory_temperature_c
            else:
                value.nvmlReturn = pynvml.NVML_ERROR_NOT_SUPPORTED
        return values

    def nvmlDeviceGetRemappedRows(self, handle: object) -> tuple[int, int, int, int]:  # noqa: N802
        gpu = self._device("nvmlDeviceGetRemappedRows", handle)
        return (
            gpu.remapped_rows_corrected,
            gpu.remapped_rows_uncorrected,
            int(gpu.row_remap_pending),
            int(gpu.row_remap_failed),
        )

    def nvmlDeviceGetPcieReplayCounter(self, handle: object) -> int:  # noqa: N802
        return self._device("nvmlDeviceGetPcieReplayCounter", handle).pcie_replays

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: object) -> int:  # noqa: N802
        return self._device("nvmlDeviceGetCurrentClocksEventReasons", handle).clock_event_reasons

    def nvmlDeviceGetSupportedClocksEventReasons(self, handle: object) -> int:  # noqa: N802
        gpu = self._device("nvmlDeviceGetSupportedClocksEventReasons", handle)
        return gpu.supported_clock_event_reasons

    def nvmlDeviceGetSupportedClocksThrottleReasons(self, handle: object) -> int:  # noqa: N802
        gpu = self._device("nvmlDeviceGetSupportedClocksThrottleReasons", handle)
        return gpu.supported_clock_event_reasons

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: object) -> int:  # noqa: N802
        return self._device("nvmlDeviceGetCurrentClocksThrottleReasons", handle).clock_event_reasons

    def nvmlDeviceGetTotalEccErrors(  # noqa: N802
        self, handle: object, error_type: int, counter_type: int
    ) -> int:
        gpu = self._device("nvmlDeviceGetTotalEccErrors", handle)
        if counter_type != pynvml.NVML_VOLATILE_ECC:
            raise nvml_error("InvalidArgument")
        if error_type == pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED:
            return gpu.ecc_corrected
        if error_type == pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED:
            return gpu.ecc_uncorrected
        raise nvml_error("InvalidArgument")

    def nvmlGpmQueryDeviceSupport(self, handle: object) -> Any:  # noqa: N802
        gpu = self._device("nvmlGpmQueryDeviceSupport", handle)
        support = pynvml.c_nvmlGpmSupport_t()
        support.version = pynvml.NVML_GPM_SUPPORT_VERSION
        support.isSupportedDevice = int(gpu.gpm_supported)
        return support

    def nvmlGpmSampleAlloc(self) -> Any:  # noqa: N802
        self._enter("nvmlGpmSampleAlloc")
        key = 0x1000 + 0x10 * len(self._gpm_samples)
        self._gpm_samples[key] = _GpmSample()
        return ctypes.cast(ctypes.c_void_p(key), pynvml.c_nvmlGpmSample_t)

    def nvmlGpmSampleFree(self, sample: object) -> None:  # noqa: N802
        self._enter("nvmlGpmSampleFree")
        self._gpm_sample(sample).freed = True

    def nvmlGpmSampleGet(self, handle: object, sample: object) -> object:  # noqa: N802
        gpu = self._device("nvmlGpmSampleGet", handle)
        if not gpu.gpm_supported:
            raise nvml_error("NotSupported")
        held = self._gpm_sample(sample)
        self._gpm_taken += 1
        held.gpu, held.taken = gpu, self._gpm_taken
        held.rates = {}
        for metric_id, rate_field in _GPM_RATES.items():
            rate = getattr(gpu, rate_field)
            if rate is not None:
                held.rates[metric_id] = float(rate)
        return sample

    def nvmlGpmMetricsGet(self, request: Any) -> Any:  # noqa: N802
        self._enter("nvmlGpmMetricsGet")
        if request.version != pynvml.NVML_GPM_METRICS_GET_VERSION:
            raise nvml_error("ArgumentVersionMismatch")
        before, after = self._gpm_sample(request.sample1), self._gpm_sample(request.sample2)
        gpu = after.gpu
        if gpu is None or before.gpu is not gpu or not 0 < before.taken < after.taken:
            raise nvml_error("InvalidArgument")  # two samples of one GPU, in order
        self._on("nvmlGpmMetricsGet", gpu)
        for slot in request.metrics[: request.numMetrics]:
            rate = after.rates.get(slot.metricId)
            if rate is None:
                slot.nvmlReturn = pynvml.NVML_ERROR_NOT_SUPPORTED
            else:
                slot.nvmlReturn = pynvml.NVML_SUCCESS
                slot.value = rate
        return request

    def _gpm_sample(self, pointer: object) -> _GpmSample:
        key = ctypes.cast(pointer, ctypes.c_void_p).value  # type: ignore[arg-type]
        held = self._gpm_samples.get(key or 0)
        if held is None or held.freed:
            raise nvml_error("InvalidArgument")
        return held

    def nvmlEventSetCreate(self) -> _EventSet:  # noqa: N802
        self._enter("nvmlEventSetCreate")
        event_set = _EventSet()
        self._event_sets.append(event_set)
        return event_set

    def nvmlDeviceRegisterEvents(  # noqa: N802
        self, handle: object, event_types: int, event_set: _EventSet
    ) -> None:
        gpu = self._device("nvmlDeviceRegisterEvents", handle)
        if not event_types & pynvml.nvmlEventTypeXidCriticalError:
            raise nvml_error("InvalidArgument")
        event_set.gpus.append(gpu)

    def nvmlEventSetWait(self, event_set: _EventSet, timeout_ms: int) -> _EventData:  # noqa: N802
        self._enter("nvmlEventSetWait")
        del timeout_ms  # the fake never blocks
        if event_set.freed:
            raise nvml_error("InvalidArgument")
        if not event_set.queue:
            raise nvml_error("Timeout")
        gpu, xid = event_set.queue.pop(0)
        return _EventData(_Handle(gpu), pynvml.nvmlEventTypeXidCriticalError, xid)

    def nvmlEventSetFree(self, event_set: _EventSet) -> None:  # noqa: N802
        self._enter("nvmlEventSetFree")
        event_set.freed = True


# FakeGpu fields a control file may set: readings and states, not identity.
_STEERABLE = frozenset(f.name for f in dataclasses.fields(FakeGpu) if f.type in ("int", "bool"))


class SteeredFakeNVML(FakeNVML):
    """TESTING ONLY: a FakeNVML steered through a JSON file by another process.

    A sidecar's fake lives in the sidecar's process, out of reach of the test that
    started it; the test writes the file instead. It holds FakeGpu fields applied to
    every GPU (``{"gpu_util_percent": 0, "lost": true, "ecc_uncorrected": 2}``) and
    ``xids``, a list of codes: each one not seen before is injected once. The file is
    re-read on every call whose file has changed; a missing file steers nothing.
    """

    def __init__(self, gpus: list[FakeGpu], control: Path, **kw: Any) -> None:
        super().__init__(gpus, **kw)
        self._control = control
        self._control_stamp: tuple[int, int] | None = None
        self._xids_seen = 0
        # The sampler and the XID thread both call in.
        self._control_lock = threading.Lock()

    def _enter(self, fn: str) -> None:
        self._steer()
        super()._enter(fn)

    def _steer(self) -> None:
        with self._control_lock:
            try:
                st = self._control.stat()
            except FileNotFoundError:
                return
            stamp = (st.st_mtime_ns, st.st_size)
            if stamp == self._control_stamp:
                return
            self._control_stamp = stamp
            doc: dict[str, Any] = json.loads(self._control.read_text())
            xids: list[int] = doc.pop("xids", [])
            unknown = set(doc) - _STEERABLE
            if unknown:
                raise ValueError(f"{self._control}: not steerable: {sorted(unknown)}")
            for gpu in self.gpus:
                for name, value in doc.items():
                    setattr(gpu, name, value)
            for xid in xids[self._xids_seen :]:
                for gpu in self.gpus:
                    self.inject_xid(gpu.uuid, xid)
            self._xids_seen = max(self._xids_seen, len(xids))


def demo_gpus(count: int) -> list[FakeGpu]:
    """Busy H100-like devices with distinct, plausible readings."""
    return [
        FakeGpu(
            uuid=f"GPU-fa4e0000-0000-4000-8000-{i:012d}",
            gpu_util_percent=90 + i % 10,
            mem_util_percent=40 + i % 20,
            memory_used_bytes=(60 + i) * GIB,
            power_mw=550_000 + 1_000 * i,
            energy_mj=1_000_000_000 + 10_000_000 * i,
            temperature_c=60 + i,
            memory_temperature_c=68 + i,
            clock_event_reasons=0x004 if i % 2 else 0,  # half of them power-capped
            # A bf16 training step: SMs nearly always busy, tensor cores half the time.
            sm_active_percent=88.0 + i % 10,
            sm_occupancy_percent=35.0 + i % 5,
            tensor_active_percent=52.0 + i % 10,
            dram_active_percent=41.0 + i % 10,
            fp16_active_percent=4.0,
            fp32_active_percent=9.0,
            pcie_tx_mib_per_s=310.0 + i,
            pcie_rx_mib_per_s=1_450.0 + i,
            nvlink_tx_mib_per_s=61_000.0 + 100 * i,
            nvlink_rx_mib_per_s=60_800.0 + 100 * i,
        )
        for i in range(count)
    ]


def demo(count: int, control: Path | None = None) -> FakeNVML:
    """A FakeNVML whose energy counters advance in real time (for demos, benchmarks);
    steered through `control` when given (SteeredFakeNVML)."""
    if control is not None:
        return SteeredFakeNVML(demo_gpus(count), control, clock=time.monotonic)
    return FakeNVML(demo_gpus(count), clock=time.monotonic)

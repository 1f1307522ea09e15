"""Typed calls into NVML: the only module that touches ``pynvml`` (nvidia-ml-py).

pynvml ships no type stubs, so everything untyped stays in here. ``Nvml``
takes the library as an object with pynvml's module-level functions: the real
module in production, ``FakeNVML`` in tests. Values come back in NVML's own
units (mW, mJ, MHz, percent); the caller converts them.

nvidia-ml-py is an optional dependency (``trainop[gpu]``): without it the
exporter runs as on a node without a GPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NewType

try:
    import pynvml

    _NVMLError: type[Exception] = pynvml.NVMLError
except ImportError:  # pragma: no cover - exercised only where nvidia-ml-py is absent
    pynvml = None

    class _NVMLError(Exception):  # type: ignore[no-redef]  # stands in so except clauses work
        """Never raised: nvidia-ml-py is not installed."""


# Opaque per-device handle (a ctypes pointer for the real library).
Handle = NewType("Handle", object)
EventSet = NewType("EventSet", object)
# An nvmlGpmSample_t: a snapshot of a GPU's performance counters, owned by NVML.
GpmSample = NewType("GpmSample", object)

# Error names as pynvml spells its classes, minus the "NVMLError_" prefix.
_UNSUPPORTED = frozenset({"NotSupported", "FunctionNotFound", "NoPermission"})
# The device or the library's state is gone: only shutdown + init can help.
# Not "Unknown": NVML's catch-all for one failed query, which the next scrape
# usually answers; taking it for a lost GPU re-initialised NVML on every scrape.
_LOST = frozenset({"GpuIsLost", "Uninitialized", "ResetRequired"})
# nvmlInit failures that mean "no usable GPU on this machine", not a bug.
_ABSENT = frozenset({"LibraryNotFound", "DriverNotLoaded", "ModuleNotFound"})

# Enough for any real burst; a device spewing XIDs must not stall a scrape.
_MAX_EVENTS_PER_DRAIN = 256


class NvmlError(Exception):
    """An NVML call failed. ``name`` is pynvml's class name without ``NVMLError_``."""

    def __init__(self, name: str, detail: str) -> None:
        super().__init__(f"{name}: {detail}")
        self.name = name
        self.detail = detail

    @property
    def unsupported(self) -> bool:
        """The device or driver cannot give this reading; asking again will not help."""
        return self.name in _UNSUPPORTED

    @property
    def lost(self) -> bool:
        """The GPU or the library state is gone; re-initialise before the next read."""
        return self.name in _LOST

    @property
    def absent(self) -> bool:
        """No NVIDIA library or driver here: a machine without a usable GPU."""
        return self.name in _ABSENT


def _translate(exc: Exception) -> NvmlError:
    name = type(exc).__name__.removeprefix("NVMLError_")
    if name == "NVMLError":
        name = f"Code{getattr(exc, 'value', '?')}"
    return NvmlError(name, str(exc))


@dataclass(frozen=True)
class Memory:
    used_bytes: int
    total_bytes: int


@dataclass(frozen=True)
class Utilization:
    gpu_percent: int
    memory_percent: int


@dataclass(frozen=True)
class RemappedRows:
    corrected: int
    uncorrected: int
    pending: bool
    failed: bool


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


class Nvml:
    """Typed wrapper over a pynvml-like library; every failure is an ``NvmlError``."""

    def __init__(self, lib: Any) -> None:
        self._lib = lib

    def _call(self, fn_name: str, *args: object) -> Any:
        try:
            return getattr(self._lib, fn_name)(*args)
        except _NVMLError as exc:
            raise _translate(exc) from exc

    def init(self) -> None:
        self._call("nvmlInit")

    def shutdown(self) -> None:
        self._call("nvmlShutdown")

    def driver_version(self) -> str:
        return _text(self._call("nvmlSystemGetDriverVersion"))

    def device_count(self) -> int:
        return int(self._call("nvmlDeviceGetCount"))

    def handle(self, index: int) -> Handle:
        return Handle(self._call("nvmlDeviceGetHandleByIndex", index))

    def uuid(self, handle: Handle) -> str:
        return _text(self._call("nvmlDeviceGetUUID", handle))

    def name(self, handle: Handle) -> str:
        return _text(self._call("nvmlDeviceGetName", handle))

    def index(self, handle: Handle) -> int:
        return int(self._call("nvmlDeviceGetIndex", handle))

    def utilization(self, handle: Handle) -> Utilization:
        rates = self._call("nvmlDeviceGetUtilizationRates", handle)
        return Utilization(int(rates.gpu), int(rates.memory))

    def memory(self, handle: Handle) -> Memory:
        info = self._call("nvmlDeviceGetMemoryInfo", handle)
        return Memory(used_bytes=int(info.used), total_bytes=int(info.total))

    def power_mw(self, handle: Handle) -> int:
        return int(self._call("nvmlDeviceGetPowerUsage", handle))

    def power_limit_mw(self, handle: Handle) -> int:
        return int(self._call("nvmlDeviceGetEnforcedPowerLimit", handle))

    def energy_mj(self, handle: Handle) -> int:
        return int(self._call("nvmlDeviceGetTotalEnergyConsumption", handle))

    def temperature_c(self, handle: Handle) -> int:
        return int(self._call("nvmlDeviceGetTemperature", handle, _const("NVML_TEMPERATURE_GPU")))

    def sm_clock_mhz(self, handle: Handle) -> int:
        return int(self._call("nvmlDeviceGetClockInfo", handle, _const("NVML_CLOCK_SM")))

    def memory_clock_mhz(self, handle: Handle) -> int:
        return int(self._call("nvmlDeviceGetClockInfo", handle, _const("NVML_CLOCK_MEM")))

    def memory_temperature_c(self, handle: Handle) -> float:
        # nvmlDeviceGetTemperature(V) has no memory sensor (NVML_TEMPERATURE_GPU is its
        # only one): HBM temperature is a field value, as DCGM reads it.
        return self._field_value(handle, _const("NVML_FI_DEV_MEMORY_TEMP"))

    def _field_value(self, handle: Handle, field_id: int) -> float:
        (value,) = self._call("nvmlDeviceGetFieldValues", handle, [field_id])
        # The call succeeds as a whole; each field carries its own status.
        if value.nvmlReturn != _const("NVML_SUCCESS"):
            raise _error_for(int(value.nvmlReturn))
        kind = int(value.valueType)
        member = next((m for t, m in _VALUE_MEMBERS if _const(t) == kind), None)
        if member is None:
            raise NvmlError("UnknownValueType", f"field {field_id}: type {value.valueType}")
        return float(getattr(value.value, member))

    def remapped_rows(self, handle: Handle) -> RemappedRows:
        corrected, uncorrected, pending, failed = self._call("nvmlDeviceGetRemappedRows", handle)
        return RemappedRows(int(corrected), int(uncorrected), bool(pending), bool(failed))

    def pcie_replays(self, handle: Handle) -> int:
        return int(self._call("nvmlDeviceGetPcieReplayCounter", handle))

    def clock_event_reasons(self, handle: Handle) -> int:
        try:
            return int(self._call("nvmlDeviceGetCurrentClocksEventReasons", handle))
        except NvmlError as err:
            # Drivers before r535 only know the older name of the same call.
            if err.name != "FunctionNotFound":
                raise
            return int(self._call("nvmlDeviceGetCurrentClocksThrottleReasons", handle))

    def supported_clock_event_reasons(self, handle: Handle) -> int:
        try:
            return int(self._call("nvmlDeviceGetSupportedClocksEventReasons", handle))
        except NvmlError as err:
            if err.name != "FunctionNotFound":
                raise
            return int(self._call("nvmlDeviceGetSupportedClocksThrottleReasons", handle))

    def ecc_volatile_errors(self, handle: Handle, *, uncorrected: bool) -> int:
        error_type = _const(
            "NVML_MEMORY_ERROR_TYPE_UNCORRECTED"
            if uncorrected
            else "NVML_MEMORY_ERROR_TYPE_CORRECTED"
        )
        return int(
            self._call(
                "nvmlDeviceGetTotalEccErrors", handle, error_type, _const("NVML_VOLATILE_ECC")
            )
        )

    # --- GPM (GPU performance monitoring, Hopper and newer) ----------------------
    def gpm_supported(self, handle: Handle) -> bool:
        support = self._call("nvmlGpmQueryDeviceSupport", handle)
        return bool(support.isSupportedDevice)

    def gpm_alloc(self) -> GpmSample:
        return GpmSample(self._call("nvmlGpmSampleAlloc"))

    def gpm_free(self, sample: GpmSample) -> None:
        # As with event sets: a sample NVML cannot free dies with the library state.
        with contextlib.suppress(NvmlError):
            self._call("nvmlGpmSampleFree", sample)

    def gpm_sample(self, handle: Handle, sample: GpmSample) -> GpmSample:
        """Fill ``sample`` with the GPU's counters now; returns it."""
        self._call("nvmlGpmSampleGet", handle, sample)
        return sample

    def gpm_metrics(
        self, before: GpmSample, after: GpmSample, metrics: Sequence[str]
    ) -> dict[str, float | NvmlError]:
        """Metrics over the interval between two samples, in NVML's units (percent, MiB/s).

        ``metrics`` are pynvml's constant names (``NVML_GPM_METRIC_SM_UTIL``...). Each
        comes back with its value or with the error NVML gave for it alone (NotSupported:
        NVLink on a board without it); only a failure of the whole call raises.
        """
        ids = {_const(name): name for name in metrics}
        request = _struct("c_nvmlGpmMetricsGet_t")
        if len(ids) > len(request.metrics):
            raise ValueError(f"{len(ids)} GPM metrics asked, NVML takes {len(request.metrics)}")
        request.version = _const("NVML_GPM_METRICS_GET_VERSION")
        request.numMetrics = len(ids)
        request.sample1 = before
        request.sample2 = after
        for slot, metric_id in zip(request.metrics, ids, strict=False):
            slot.metricId = metric_id
        self._call("nvmlGpmMetricsGet", request)
        ok = _const("NVML_SUCCESS")
        out: dict[str, float | NvmlError] = {}
        for slot in request.metrics[: len(ids)]:
            code = int(slot.nvmlReturn)
            out[ids[int(slot.metricId)]] = float(slot.value) if code == ok else _error_for(code)
        return out

    def open_xid_events(self, handle: Handle) -> EventSet:
        event_set = EventSet(self._call("nvmlEventSetCreate"))
        try:
            self._call(
                "nvmlDeviceRegisterEvents",
                handle,
                _const("nvmlEventTypeXidCriticalError"),
                event_set,
            )
        except NvmlError:
            self.close_events(event_set)
            raise
        return event_set

    def drain_xid_events(self, event_set: EventSet) -> list[int]:
        """XID codes queued since the last drain; never blocks."""
        xids: list[int] = []
        for _ in range(_MAX_EVENTS_PER_DRAIN):
            try:
                data = self._call("nvmlEventSetWait", event_set, 0)
            except NvmlError as err:
                if err.name == "Timeout":  # NVML's way of saying "queue empty"
                    break
                raise
            xids.append(int(data.eventData))
        return xids

    def close_events(self, event_set: EventSet) -> None:
        # Failing to free is harmless: the set dies with the library state anyway.
        with contextlib.suppress(NvmlError):
            self._call("nvmlEventSetFree", event_set)


# nvmlValueType_t -> the member of the nvmlValue_t union that holds it.
_VALUE_MEMBERS: tuple[tuple[str, str], ...] = (
    ("NVML_VALUE_TYPE_DOUBLE", "dVal"),
    ("NVML_VALUE_TYPE_UNSIGNED_INT", "uiVal"),
    ("NVML_VALUE_TYPE_UNSIGNED_LONG", "ulVal"),
    ("NVML_VALUE_TYPE_UNSIGNED_LONG_LONG", "ullVal"),
    ("NVML_VALUE_TYPE_SIGNED_LONG_LONG", "sllVal"),
    ("NVML_VALUE_TYPE_SIGNED_INT", "siVal"),
    ("NVML_VALUE_TYPE_UNSIGNED_SHORT", "usVal"),
)


def _error_for(code: int) -> NvmlError:
    """The error for an nvmlReturn_t that came back in a struct rather than raised."""
    if pynvml is None:  # pragma: no cover
        return NvmlError(f"Code{code}", "nvidia-ml-py is not installed")
    return _translate(pynvml.NVMLError(code))


def _const(name: str) -> int:
    # Constants are NVML ABI values; when pynvml is absent only a fake could
    # be in use, and the fake reads them from pynvml too.
    if pynvml is None:  # pragma: no cover
        raise NvmlError("ModuleNotFound", "nvidia-ml-py is not installed")
    return int(getattr(pynvml, name))


def _struct(name: str) -> Any:
    """A fresh instance of one of pynvml's ctypes structs, for calls that take one."""
    if pynvml is None:  # pragma: no cover
        raise NvmlError("ModuleNotFound", "nvidia-ml-py is not installed")
    return getattr(pynvml, name)()


def load_real() -> Nvml:
    """The real library, or ``NvmlError('ModuleNotFound')`` without nvidia-ml-py.

    Loading the shared library itself happens in ``init()``, which raises
    ``LibraryNotFound`` on a machine without the NVIDIA driver.
    """
    if pynvml is None:  # pragma: no cover
        raise NvmlError("ModuleNotFound", "nvidia-ml-py (import pynvml) is not installed")
    return Nvml(pynvml)

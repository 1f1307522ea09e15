"""CPU energy from the kernel's RAPL counters (powercap sysfs), where readable.

Each zone's ``energy_uj`` wraps at ``max_energy_range_uj`` (about 262 kJ on
common Intel parts: every ~20 min at 200 W), so the reader keeps its own
running total and adds one range per wrap it sees. A wrap is only seen if
the exporter is scraped more often than the counter wraps, which any
Prometheus interval is.

Zones are node-wide (a CPU package, its DRAM), not this pod's share. Only
zones whose counters do not overlap are exported (``sums_cleanly``), so
``sum()`` over them counts no joule twice. Since CVE-2020-8694 most kernels
make ``energy_uj`` readable by root only; then ``trainop_cpu_energy_up`` is 0
and the reason is logged once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from trainop.exporter.statelog import StateLog

log = logging.getLogger(__name__)

DEFAULT_POWERCAP_ROOT = Path("/sys/class/powercap")
UJ_PER_J = 1_000_000.0


@dataclass(frozen=True)
class ZoneEnergy:
    zone: str  # e.g. "intel-rapl:0:1": unique on the node
    name: str  # e.g. "dram": what the kernel calls it, not unique
    joules: float


@dataclass(frozen=True)
class RaplSnapshot:
    up: bool
    zones: tuple[ZoneEnergy, ...] = ()


@dataclass
class _Zone:
    path: Path
    zone: str
    name: str
    max_range_uj: int
    last_raw_uj: int | None = None
    wrapped_uj: int = 0


def sums_cleanly(zone: str, name: str) -> bool:
    """Whether a zone's energy adds to the other exported zones' without overlap.

    Purely computational. Top-level zones (``intel-rapl:0``) are CPU packages,
    and on client parts ``psys``, the whole platform, which contains them.
    Sub-zones (``intel-rapl:0:0``) are parts of their package (``core``,
    ``uncore``), except ``dram``: the kernel files it under the package, but
    the package's counter does not include memory.
    """
    if zone.count(":") == 1:
        return name != "psys"
    return name == "dram"


def _accumulate(zone: _Zone, raw_uj: int) -> int:
    """Running total in µJ, adding one full range per wrap. Mutates ``zone``."""
    if zone.last_raw_uj is not None and raw_uj < zone.last_raw_uj:
        zone.wrapped_uj += zone.max_range_uj
    zone.last_raw_uj = raw_uj
    return zone.wrapped_uj + raw_uj


class RaplReader:
    def __init__(self, root: Path | None = DEFAULT_POWERCAP_ROOT) -> None:
        self._root = root
        self._zones: list[_Zone] | None = None
        self._errors = 0
        self._states = StateLog(log)

    def _discover(self, root: Path) -> list[_Zone]:
        zones: list[_Zone] = []
        overlapping: list[str] = []
        # The class dir lists every zone and sub-zone flat: intel-rapl:0, intel-rapl:0:0...
        for path in sorted(root.glob("intel-rapl:*")):
            try:
                name = (path / "name").read_text().strip()
                max_range = int((path / "max_energy_range_uj").read_text())
            except (OSError, ValueError):
                continue
            if not sums_cleanly(path.name, name):
                overlapping.append(f"{name} ({path.name})")
                continue
            zones.append(_Zone(path=path, zone=path.name, name=name, max_range_uj=max_range))
        if overlapping:
            log.info(
                "RAPL: not exporting %s: their energy is already in a package's counter "
                "(psys: the packages' is in it), so sum() would count it twice",
                ", ".join(overlapping),
            )
        return zones

    @property
    def read_errors(self) -> int:
        """Failed reads so far; a counter, so it never goes down, whatever read() raised."""
        return self._errors

    def read(self) -> RaplSnapshot:
        if self._root is None:
            return RaplSnapshot(up=False)
        if self._zones is None:
            # Zones are fixed by the hardware: look once.
            self._zones = self._discover(self._root)
            if not self._zones:
                log.info("No RAPL zones under %s: CPU energy is not exported", self._root)
        if not self._zones:
            return RaplSnapshot(up=False)
        readings: list[ZoneEnergy] = []
        for zone in self._zones:
            try:
                raw = int((zone.path / "energy_uj").read_text())
            except PermissionError:
                self._states.set(
                    "read",
                    f"RAPL {zone.path / 'energy_uj'} is not readable by this process (root "
                    "only on most kernels since CVE-2020-8694): CPU energy is not exported. "
                    "To export it, make energy_uj readable on the node (chmod o+r at boot, "
                    "which reopens that side channel to local users); to stop trying, set "
                    "TRAINOP_EXPORTER_POWERCAP_ROOT= (empty)",
                    logging.INFO,
                )
                return RaplSnapshot(up=False)
            except (OSError, ValueError) as err:
                self._errors += 1
                self._states.set("read", f"RAPL read failed: {err}")
                return RaplSnapshot(up=False)
            readings.append(ZoneEnergy(zone.zone, zone.name, _accumulate(zone, raw) / UJ_PER_J))
        self._states.clear("read", "RAPL counters readable again")
        return RaplSnapshot(up=True, zones=tuple(readings))

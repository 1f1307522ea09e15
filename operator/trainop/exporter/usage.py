"""What a worker pod has cost since its sidecar started: GPU-seconds held, GPU-seconds
idle (0 % utilization) and the joules its GPUs drew. Fed by the sampler's passes, read
by the progress annotator, which hands the totals to the operator (status.usage).

Purely computational: the caller passes each pass's time.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from trainop.api import constants as c
from trainop.exporter.gpu import GpuSnapshot


@dataclass
class UsageMeter:
    gpu_seconds: float = 0.0
    idle_gpu_seconds: float = 0.0
    energy_joules: float = 0.0
    _last_time: float | None = None
    _last_energy: dict[str, float] = field(default_factory=dict)
    # The sampler's thread adds, the annotator's reads.
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, gpu: GpuSnapshot, assigned: int | None, at: float) -> None:
        """One sampler pass. The time since the previous pass is charged as that pass
        saw the GPUs: held (every assigned GPU, readable or not), and idle if at 0 %.
        `assigned` is how many GPUs gpus.json lists (None before the trainer wrote it)."""
        with self._lock:
            dt = 0.0 if self._last_time is None else max(0.0, at - self._last_time)
            self._last_time = at
            if assigned is None:
                # gpus.json not written yet: which GPUs are the pod's is unknown, and
                # the readings may be a whole node's.
                return
            self.gpu_seconds += dt * assigned
            for reading in gpu.gpus:
                if not reading.up:
                    continue
                if reading.utilization_ratio == 0.0:
                    self.idle_gpu_seconds += dt
                if reading.energy_joules is not None:
                    # NVML's counter runs since the driver loaded: only differences are
                    # ours; a lower value (driver reloaded) starts a new baseline.
                    last = self._last_energy.get(reading.uuid)
                    if last is not None and reading.energy_joules >= last:
                        self.energy_joules += reading.energy_joules - last
                    self._last_energy[reading.uuid] = reading.energy_joules
                elif reading.power_watts is not None:
                    # GPUs older than Volta have no energy counter: integrate power.
                    self.energy_joules += reading.power_watts * dt

    def totals(self) -> dict[str, float]:
        """The annotation's usage keys; empty while no GPU was held (a CPU pod)."""
        with self._lock:
            if self.gpu_seconds == 0.0 and self.energy_joules == 0.0:
                return {}
            return {
                c.USAGE_GPU_SECONDS: round(self.gpu_seconds, 1),
                c.USAGE_IDLE_GPU_SECONDS: round(self.idle_gpu_seconds, 1),
                c.USAGE_ENERGY_JOULES: round(self.energy_joules, 1),
            }

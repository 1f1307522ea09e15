"""The job's GPU energy over one local run, from two scrapes of its exporter.

NVML's energy counter (and so trainop_gpu_energy_joules_total) counts from driver
load, for every GPU on the host: a run's energy is the increase between a reading
at its start and one at its end, on the GPUs the job was given.
"""

from __future__ import annotations

from collections.abc import Collection

from prometheus_client.parser import text_string_to_metric_families

from trainop.exporter.names import GPU_ENERGY, L_GPU_UUID


def energy_by_gpu(exposition: str) -> dict[str, float]:
    """trainop_gpu_energy_joules_total per GPU UUID in a /metrics body. Pure."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            uuid = sample.labels.get(L_GPU_UUID)
            if sample.name == GPU_ENERGY and uuid:
                out[uuid] = sample.value
    return out


def energy_used(start: str, end: str, gpus: Collection[str]) -> float | None:
    """Joules the job's GPUs used between two scrapes; None when no GPU of the job was
    read in both. A counter that went down (driver reloaded) counts from zero. Pure."""
    before, after = energy_by_gpu(start), energy_by_gpu(end)
    seen = [u for u in gpus if u in before and u in after]
    if not seen:
        return None
    return sum(after[u] - before[u] if after[u] >= before[u] else after[u] for u in seen)

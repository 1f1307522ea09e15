"""status.usage: GPU-seconds, idle GPU-seconds and energy summed over every pod a job
ever had, from the totals each worker's metrics sidecar puts on its progress annotation.

Each sidecar counts from its own start, so the job's total grows by the difference
between a pod's report and the last one counted for that pod (kept in status, so an
operator restart counts nothing twice). A pod that is gone keeps its share: only its
bookkeeping entry goes. A report lower than the last one means the sidecar restarted
and counts from 0 again, so all of it is new.
"""

from __future__ import annotations

from trainop.api import constants as c
from trainop.api.status import PodUsage, Usage
from trainop.core.observe import ObservedPod
from trainop.core.plan.model import Draft

_JOULES_PER_KWH = 3.6e6


def record_usage(draft: Draft, workers: list[ObservedPod]) -> None:
    old = draft.status.usage
    reports = {p.uid: r for p in workers if (r := _report(p)) is not None}
    if old is None and not reports:
        return  # a CPU job, or no sidecar has reported yet: no usage block at all
    usage = old.model_copy(deep=True) if old is not None else Usage()
    seen = {p.pod_uid: p for p in usage.pods}
    pods: list[PodUsage] = []
    for uid, (gpu, idle, energy) in sorted(reports.items()):
        last = seen.get(uid) or PodUsage(pod_uid=uid)
        usage.gpu_seconds += _delta(gpu, last.gpu_seconds)
        usage.idle_gpu_seconds += _delta(idle, last.idle_gpu_seconds)
        usage.energy_joules += _delta(energy, last.energy_joules)
        pods.append(
            PodUsage(pod_uid=uid, gpu_seconds=gpu, idle_gpu_seconds=idle, energy_joules=energy)
        )
    # A pod still observed but not reporting this time (a torn annotation) keeps its
    # entry; one no longer observed is gone, and its share is already in the totals.
    observed = {p.uid for p in workers}
    pods += [p for uid, p in seen.items() if uid in observed and uid not in reports]
    usage.pods = pods
    usage.gpu_seconds = round(usage.gpu_seconds, 3)
    usage.idle_gpu_seconds = round(usage.idle_gpu_seconds, 3)
    usage.energy_joules = round(usage.energy_joules, 3)
    usage.gpu_hours = round(usage.gpu_seconds / 3600, 3)
    usage.energy_kwh = round(usage.energy_joules / _JOULES_PER_KWH, 4)
    draft.status.usage = usage


def _delta(now: float, last: float) -> float:
    return now - last if now >= last else now


def _report(pod: ObservedPod) -> tuple[float, float, float] | None:
    values: list[float] = []
    for key in c.USAGE_KEYS:
        value = pod.progress.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            return None  # no sidecar report, or a foreign one: nothing to count
        values.append(float(value))
    gpu, idle, energy = values
    return gpu, idle, energy

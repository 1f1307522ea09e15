"""Which of this machine's GPUs each local worker gets.

On a cluster the device plugin gives every worker pod its own `resources.gpus`
devices; here the runner does it with CUDA_VISIBLE_DEVICES, so two workers never
share a GPU and each one's LOCAL_RANK 0 is its own first device.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass

from trainop_runtime import gpus

# `nvidia-smi -L`: "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-5b1e...)"; MIG lines are indented.
_GPU_LINE = re.compile(r"^GPU (\d+): .*\(UUID: (GPU-[0-9a-fA-F-]+)\)\s*$")


@dataclass(frozen=True)
class HostGpu:
    index: int
    uuid: str


@dataclass(frozen=True)
class Allocation:
    """Per worker slot, the GPU UUIDs it sees; empty slices mean a CPU run."""

    slices: tuple[tuple[str, ...], ...]
    note: str  # one line for the user: where the job runs and why

    @property
    def on_gpu(self) -> bool:
        return any(self.slices)

    @property
    def uuids(self) -> frozenset[str]:
        return frozenset(u for s in self.slices for u in s)

    def visible_devices(self, slot: int) -> str:
        """CUDA_VISIBLE_DEVICES for a slot: its UUIDs, or "" (no GPU, as in a pod without a
        GPU request). UUIDs, not indices, because they also name the GPU in the metrics."""
        return ",".join(self.slices[slot]) if slot < len(self.slices) else ""


class NotEnoughGpusError(Exception):
    """The job asks for more GPUs than this machine has; the message says what to change."""


def parse_gpu_list(text: str) -> list[HostGpu]:
    """The whole GPUs in `nvidia-smi -L` output (MIG instances are not split). Pure."""
    found = (_GPU_LINE.match(line.strip()) for line in text.splitlines())
    return [HostGpu(int(m[1]), m[2]) for m in found if m]


def restrict(host: list[HostGpu], visible: str | None) -> list[HostGpu]:
    """The GPUs a CUDA_VISIBLE_DEVICES already set by the user leaves (indices or UUIDs),
    read as the trainer runtime reads it for gpus.json. Pure."""
    if visible is None:
        return host
    ordered = [g.uuid for g in sorted(host, key=lambda g: g.index)]
    kept = set(gpus.cuda_visible(ordered, {"CUDA_VISIBLE_DEVICES": visible}))
    return [g for g in host if g.uuid in kept]


def host_gpus() -> list[HostGpu]:
    """This machine's GPUs, from nvidia-smi -L, else NVML; none without a driver."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        uuids = gpus.uuids_from_nvml() or []
        return [HostGpu(i, u) for i, u in enumerate(uuids) if u.startswith("GPU-")]
    try:
        done = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return parse_gpu_list(done.stdout) if done.returncode == 0 else []


def allocate(replicas: int, gpus_per_worker: int, host: list[HostGpu]) -> Allocation:
    """Give each of `replicas` workers its own `gpus_per_worker` GPUs. Purely computational.

    A GPU job on a machine with no GPU runs on CPU (the quickstart on a laptop); one
    with some GPUs but too few is refused, since sharing would change what it measures.
    """
    cpu = tuple(() for _ in range(replicas))
    if gpus_per_worker == 0:
        return Allocation(cpu, "on CPU (spec.resources.gpus is 0)")
    if not host:
        return Allocation(cpu, "on CPU: this machine has no GPU (nvidia-smi -L lists none)")
    needed = replicas * gpus_per_worker
    if needed > len(host):
        fit = len(host) // gpus_per_worker
        hint = (
            f"run fewer workers (--replicas {fit})"
            if fit >= 1
            else f"lower spec.resources.gpus to {len(host)} or less"
        )
        raise NotEnoughGpusError(
            f"{replicas} worker(s) x spec.resources.gpus {gpus_per_worker} need {needed} GPUs, "
            f"this machine has {len(host)}: {hint}"
        )
    ordered = sorted(host, key=lambda g: g.index)
    per_slot = [ordered[i * gpus_per_worker : (i + 1) * gpus_per_worker] for i in range(replicas)]
    shown = "; ".join(
        f"worker {i}: GPU {','.join(str(g.index) for g in gpus)}" for i, gpus in enumerate(per_slot)
    )
    return Allocation(tuple(tuple(g.uuid for g in gpus) for gpus in per_slot), f"on GPU ({shown})")

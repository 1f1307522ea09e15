"""gpus.json: which GPUs this trainer container sees, for the metrics sidecar.

The sidecar has no GPU request of its own, so the device plugin shows it none;
the trainer container tells it which UUIDs to read.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

from trainop_runtime import contract
from trainop_runtime._fs import atomic_write_bytes

logger = logging.getLogger(__name__)

_UUID_PREFIXES = ("GPU-", "MIG-")


def uuids_from_env(env: Mapping[str, str]) -> list[str]:
    """UUIDs named by NVIDIA_VISIBLE_DEVICES, else CUDA_VISIBLE_DEVICES. Purely computational.

    Indices ("0,1"), "all", "none" and "void" name no UUID, so they give nothing:
    the sidecar could not map them to a device without NVML anyway.
    """
    for name in ("NVIDIA_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES"):
        raw = env.get(name, "").strip()
        if raw:
            found = [d.strip() for d in raw.split(",")]
            return [d for d in found if d.startswith(_UUID_PREFIXES)]
    return []


def uuids_from_nvml() -> list[str] | None:
    """UUIDs of the GPUs NVML shows this container; None when NVML is unavailable."""
    try:
        import pynvml  # noqa: PLC0415 - optional (the gpu extra); absent on CPU images
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        logger.info("NVML unavailable (%s); falling back to the visible-devices env", e)
        return None
    try:
        handles = (pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount()))
        uuids = [pynvml.nvmlDeviceGetUUID(h) for h in handles]
        return [u.decode() if isinstance(u, bytes) else str(u) for u in uuids]
    finally:
        pynvml.nvmlShutdown()


def cuda_visible(nvml: list[str], env: Mapping[str, str]) -> list[str]:
    """The GPUs of `nvml` (NVML's order) that CUDA_VISIBLE_DEVICES leaves the trainer.
    Purely computational.

    NVML ignores that variable, so on a machine that is not a pod (the local runner, a
    workstation), or in a pod whose user narrowed it, every GPU would be reported. Indices
    count in NVML's order, which is CUDA's when CUDA_DEVICE_ORDER=PCI_BUS_ID; CUDA stops at
    the first entry it cannot use, and so does this.
    """
    raw = env.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return nvml
    kept: list[str] = []
    for entry in (e.strip() for e in raw.split(",")):
        if entry.isdigit() and int(entry) < len(nvml):
            found: str | None = nvml[int(entry)]
        else:
            found = next((u for u in nvml if entry and u.startswith(entry)), None)
        if found is None:
            break
        if found not in kept:
            kept.append(found)
    return kept


def write_gpus_file(run_dir: Path, env: Mapping[str, str]) -> list[str]:
    nvml = uuids_from_nvml()
    uuids = cuda_visible(nvml, env) if nvml is not None else uuids_from_env(env)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(
        run_dir / contract.GPUS_FILE, json.dumps({"uuids": uuids}).encode(), durable=False
    )
    return uuids

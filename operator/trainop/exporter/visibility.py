"""Which GPUs belong to this pod: purely computational, no I/O.

The sidecar requests no GPU, so the operator gives it
``NVIDIA_VISIBLE_DEVICES=all`` and it sees every GPU of the node. The trainer
container, which did get the pod's GPUs from the device plugin, writes their
UUIDs to ``gpus.json`` in the shared run dir; only those are exported. See
README.md in this package.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

_UUID_PREFIX = "gpu-"


def normalise_uuid(uuid: str) -> str:
    """NVML writes ``GPU-<uuid>``, torch's device properties a bare ``<uuid>``."""
    text = uuid.strip().lower()
    return text.removeprefix(_UUID_PREFIX)


def parse_gpus_file(text: str) -> tuple[str, ...]:
    """The UUIDs in a gpus.json document; ``ValueError`` if it is not ``{"uuids": [str...]}``."""
    doc = json.loads(text)
    uuids = doc.get("uuids") if isinstance(doc, dict) else None
    if not isinstance(uuids, list) or not all(isinstance(u, str) for u in uuids):
        raise ValueError('expected {"uuids": ["GPU-...", ...]}')
    return tuple(uuids)


@dataclass(frozen=True)
class Selection:
    """The node GPUs to export, and the wanted ones NVML did not list."""

    exported: tuple[str, ...]
    missing: tuple[str, ...]


def select_gpus(
    node_uuids: Sequence[str], wanted: Sequence[str] | None, *, all_gpus: bool
) -> Selection:
    """Choose the GPUs to export, in node order.

    ``wanted`` is None when gpus.json is absent or unreadable: export nothing,
    since every GPU of the node would attribute other jobs' power to this one.
    ``all_gpus`` (an explicit opt-in) exports the whole node.
    """
    if all_gpus:
        return Selection(exported=tuple(node_uuids), missing=())
    if wanted is None:
        return Selection(exported=(), missing=())
    wanted_keys = {normalise_uuid(u): u for u in wanted}
    exported = tuple(u for u in node_uuids if normalise_uuid(u) in wanted_keys)
    found = {normalise_uuid(u) for u in exported}
    missing = tuple(orig for key, orig in wanted_keys.items() if key not in found)
    return Selection(exported=exported, missing=missing)

"""Sharded (DCP) checkpoints with real ranks: 2 torchrun workers on CPU/gloo save a
DTensor sharded across them; a torn step is skipped; a new world size reshards.

Run as a script, this file is the workers' program (``torchrun ... test_sharded.py``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.torch

EVERY = 5
LAST = 12
TORN = 15
SIZE = 8


def _train(directory: Path, out: Path) -> None:
    """Steps 1..LAST on a DTensor sharded over every rank, saved by the policy and at the end."""
    import torch
    import torch.distributed as dist
    from torch.distributed.tensor import Shard, distribute_tensor, init_device_mesh

    from trainop_runtime.checkpoint import CheckpointPolicy
    from trainop_runtime.sharded import ShardedCheckpointDir, ShardedCheckpointer

    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    w = distribute_tensor(torch.arange(float(SIZE)), mesh, [Shard(0)])
    ckpt = ShardedCheckpointer(ShardedCheckpointDir(directory), CheckpointPolicy(every_steps=EVERY))
    resumed = ckpt.resume({"w": w})
    for step in range(1, LAST + 1):
        w.add_(1.0)  # in place, while an async save of an earlier step may be in flight
        ckpt.maybe_save(step, lambda: {"w": w})
    ckpt.save_now(LAST, lambda: {"w": w})
    if dist.get_rank() == 0:
        # A step a rank was killed in the middle of: shards, no commit marker.
        torn = ShardedCheckpointDir(directory).path(TORN)
        torn.mkdir()
        (torn / "__0_0.distcp").write_bytes(b"half a shard")
        out.write_text(json.dumps({"resumed": resumed, "local": w.to_local().tolist()}))
    dist.destroy_process_group()


def _resume(directory: Path, out: Path) -> None:
    """Resume at another world size; also read back the async-saved steps."""
    import torch
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict_loader import load
    from torch.distributed.tensor import Shard, distribute_tensor, init_device_mesh

    from trainop_runtime.checkpoint import CheckpointPolicy
    from trainop_runtime.sharded import ShardedCheckpointDir, ShardedCheckpointer

    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    d = ShardedCheckpointDir(directory)
    ckpt = ShardedCheckpointer(d, CheckpointPolicy(every_steps=EVERY))
    w = distribute_tensor(torch.zeros(SIZE), mesh, [Shard(0)])
    resumed = ckpt.resume({"w": w})
    saved = {}
    for step in d.committed_steps():
        t = distribute_tensor(torch.zeros(SIZE), mesh, [Shard(0)])
        load({"w": t}, checkpoint_id=d.path(step))
        saved[step] = t.full_tensor().tolist()
    if dist.get_rank() == 0:
        doc = {"resumed": resumed, "w": w.full_tensor().tolist(), "saved": saved}
        out.write_text(json.dumps(doc))
    dist.destroy_process_group()


def _torchrun(nproc: int, phase: str, directory: Path, out: Path) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += ["--nproc-per-node", str(nproc), __file__, phase, str(directory), str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_sharded_checkpoints_save_per_rank_skip_torn_steps_and_reshard(tmp_path: Path) -> None:
    ckpt_dir = tmp_path / "checkpoints"

    _torchrun(2, "train", ckpt_dir, tmp_path / "train.json")

    trained = json.loads((tmp_path / "train.json").read_text())
    assert trained == {"resumed": None, "local": [float(LAST + i) for i in range(SIZE // 2)]}
    step_dir = ckpt_dir / f"step_{LAST:09d}.dcp"
    # One file per rank, each holding only that rank's shard.
    assert sorted(p.name for p in step_dir.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert (step_dir / "COMMITTED").exists()
    assert not (ckpt_dir / f"step_{TORN:09d}.dcp" / "COMMITTED").exists()

    _torchrun(1, "resume", ckpt_dir, tmp_path / "resume.json")

    resumed = json.loads((tmp_path / "resume.json").read_text())
    assert resumed["resumed"] == LAST  # not the torn, newer step
    assert resumed["w"] == [float(LAST + i) for i in range(SIZE)]  # both shards, on one rank
    # The async saves hold the values of their own step, not later in-place updates.
    assert resumed["saved"] == {
        str(s): [float(s + i) for i in range(SIZE)] for s in (LAST, 2 * EVERY, EVERY)
    }
    assert not (ckpt_dir / f"step_{TORN:09d}.dcp").exists()  # rank 0 removed it


if __name__ == "__main__":
    {"train": _train, "resume": _resume}[sys.argv[1]](Path(sys.argv[2]), Path(sys.argv[3]))

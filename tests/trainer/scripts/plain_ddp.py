"""A training script that knows nothing of trainop: env:// DDP on gloo, torch.save checkpoints.

The fault-tolerance tests run it under the launcher to prove that a plain script
recovers from in-place restarts as the helpers do. It logs one JSON line per event
to ``--log-jsonl`` so the test can count starts and steps.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


def log(path: Path, **event: object) -> None:
    line = json.dumps({"time": time.time(), **event}) + "\n"
    # O_APPEND: lines of several processes never interleave.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--log-jsonl", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--checkpoint-every", type=int, default=10)
    parser.add_argument("--step-sleep", type=float, default=0.02)
    args = parser.parse_args()

    dist.init_process_group("gloo", init_method="env://")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = DistributedDataParallel(torch.nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    step = 0
    if args.checkpoint.exists():
        state = torch.load(args.checkpoint)
        model.module.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step = int(state["step"])
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    log(args.log_jsonl, event="start", rank=rank, restart=restart, resumed_step=step)

    target = torch.arange(16, dtype=torch.float32) / 16
    while step < args.steps:
        gen = torch.Generator().manual_seed(step * 1000 + rank)
        x = torch.randn(32, 16, generator=gen)
        loss = ((model(x).squeeze(1) - x @ target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if rank == 0:
            log(args.log_jsonl, event="step", step=step, loss=loss.item())
            if step % args.checkpoint_every == 0:
                tmp = args.checkpoint.with_suffix(".tmp")
                torch.save(
                    {"model": model.module.state_dict(), "opt": opt.state_dict(), "step": step}, tmp
                )
                tmp.replace(args.checkpoint)
        time.sleep(args.step_sleep)
    dist.barrier()
    if rank == 0:
        log(args.log_jsonl, event="done", step=step)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

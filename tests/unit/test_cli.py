"""The `trainop` command's own flags."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from trainop import cli

ROOT = Path(__file__).resolve().parents[2]


def test_version_is_the_projects(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert capsys.readouterr().out == f"trainop {project['version']}\n"

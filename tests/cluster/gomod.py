"""Go modules and cached tool builds the cluster tests read (hack/build-tools.sh)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def versions() -> dict[str, str]:
    """hack/versions.env as a dict."""
    out = {}
    for line in (ROOT / "hack" / "versions.env").read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def module_dir(module: str) -> Path:
    """A module@version in the Go module cache (downloaded once through the proxy)."""
    env = {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod"}
    out = subprocess.run(
        ["go", "mod", "download", "-json", module],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        cwd="/",
    ).stdout
    return Path(json.loads(out)["Dir"])


def built(cache: Path, tool: str, version_key: str) -> Path:
    """A tool's cache dir, built by hack/build-tools.sh if it is not there yet."""
    path = cache / "bin" / f"{tool}-{versions()[version_key]}"
    if not (path / ".done").exists():
        subprocess.run(["bash", str(ROOT / "hack" / "build-tools.sh"), tool], check=True)
    return path

"""The two images, built by hack/images.sh (buildah, no daemon) from this working tree,
and the real node's cluster they run on. Shared by test_images and test_deploy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.cluster.conftest import Cluster, localcluster

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "hack" / "images.sh"
LOCALCLUSTER = ROOT / "hack" / "localcluster.py"


@dataclass
class Images:
    operator: str
    trainer: str
    trainer_base: str
    build_seconds: float
    sizes: dict[str, str] = field(default_factory=dict)


def build_images() -> Images:
    t0 = time.monotonic()
    res = subprocess.run(
        ["bash", str(IMAGES), "build"], capture_output=True, text=True, timeout=3600, check=False
    )
    assert res.returncode == 0, f"hack/images.sh build failed:\n{res.stderr[-6000:]}"
    took = time.monotonic() - t0
    names = subprocess.run(
        ["bash", str(IMAGES), "names"], capture_output=True, text=True, check=True
    ).stdout.split()
    images = Images(operator=names[0], trainer=names[1], trainer_base=names[3], build_seconds=took)
    for name in names[:2]:
        images.sizes[name] = image_size(name)
    return images


def image_size(name: str) -> str:
    """The image's size as buildah reports it (uncompressed layers, e.g. "282 MB")."""
    out = subprocess.run(
        ["buildah", "images", "--json", name], capture_output=True, text=True, check=True
    ).stdout
    return str(json.loads(out)[0]["size"])


def run_in_image(
    image: str, *argv: str, user: str | None = None
) -> subprocess.CompletedProcess[str]:
    """A command in a working container of `image`, as the image's USER unless told
    otherwise. podman/crun cannot start containers here (no RLIMIT_NOFILE raise), so
    buildah's chroot isolation runs it: the image's filesystem, env and user."""
    env = {**os.environ, "BUILDAH_ISOLATION": "chroot"}
    ctr = subprocess.run(
        ["buildah", "from", "--pull=never", image],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout.strip()
    try:
        args = ["buildah", "run"] + (["--user", user] if user else []) + [ctr, "--", *argv]
        return subprocess.run(
            args, capture_output=True, text=True, timeout=300, check=False, env=env
        )
    finally:
        subprocess.run(["buildah", "rm", ctr], capture_output=True, check=False, env=env)


def image_config(image: str) -> dict[str, object]:
    out = subprocess.run(
        ["buildah", "inspect", "--type", "image", image], capture_output=True, text=True, check=True
    ).stdout
    return dict(json.loads(out)["OCIv1"]["config"])


class RealCluster(Cluster):
    """The local control plane with one real node, in a directory of its own."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.script_env = {**os.environ, "TRAINOP_CLUSTER_DIR": str(directory)}
        super().__init__(directory / "kubeconfig", localcluster.bins(build=False))

    @classmethod
    def up(cls, directory: Path) -> RealCluster:
        res = subprocess.run(
            [sys.executable, str(LOCALCLUSTER), "up", "--real-node"],
            env={**os.environ, "TRAINOP_CLUSTER_DIR": str(directory)},
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert res.returncode == 0, res.stdout + res.stderr[-6000:]
        return cls(directory)

    def down(self) -> None:
        subprocess.run(
            [sys.executable, str(LOCALCLUSTER), "down"],
            env=self.script_env,
            capture_output=True,
            timeout=120,
            check=False,
        )

    def load_images(self) -> None:
        """Both images into the node's containerd (hack/images.sh load)."""
        sock = self.dir / "node" / "containerd" / "containerd.sock"
        res = subprocess.run(
            ["bash", str(IMAGES), "load", str(sock)],
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
        assert res.returncode == 0, res.stderr[-4000:]

"""The two images as built (hack/images.sh: buildah, --pull=never, stand-in bases):
each starts as its USER, and every console script in it imports.

Run inside the image with buildah's chroot isolation: the image's own filesystem,
environment and user (no container engine can start containers on this machine)."""

from __future__ import annotations

import json

import pytest

from tests.e2e.images import Images, image_config, run_in_image

pytestmark = [pytest.mark.slow]

# Every console script of every distribution in the image: loading its entry point
# imports its module, which is what fails when a dependency is missing.
CONSOLE_SCRIPTS = """
import importlib.metadata as md, json
names, bad = [], {}
for ep in md.entry_points(group="console_scripts"):
    names.append(ep.name)
    try:
        ep.load()
    except Exception as exc:
        bad[ep.name] = f"{ep.value}: {exc!r}"
print(json.dumps({"names": sorted(names), "bad": bad}))
"""


def _scripts(image: str) -> tuple[set[str], dict[str, str]]:
    res = run_in_image(image, "python", "-c", CONSOLE_SCRIPTS)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    return set(out["names"]), dict(out["bad"])


def _broken_beyond_base(image: str, base: str) -> dict[str, str]:
    """A base's own broken scripts (triton's proton-viewer wants pandas in PyTorch
    bases) are its business; every script the Dockerfile adds must import."""
    _, bad = _scripts(image)
    _, bad_in_base = _scripts(base)
    return {name: why for name, why in bad.items() if name not in bad_in_base}


def test_operator_image_runs_as_65532_with_a_name_kopf_can_look_up(images: Images) -> None:
    assert image_config(images.operator)["User"] == "65532:65532"
    # What Kopf's own identity falls back to (getpass.getuser -> getpwuid) when
    # POD_NAME is unset: it crashed the image before there was a passwd entry.
    res = run_in_image(
        images.operator,
        "python",
        "-c",
        "import getpass, os; print(os.getuid(), getpass.getuser());"
        "from kopf._core.engines.peering import detect_own_id; print(detect_own_id(manual=False))",
    )
    assert res.returncode == 0, res.stderr
    uid, user = res.stdout.split()[:2]
    assert (uid, user) == ("65532", "trainop")


def test_operator_image_starts_the_operator_and_sidecar_as_its_user(images: Images) -> None:
    # --help imports the handlers' command path; the sidecar's module must load too.
    res = run_in_image(images.operator, "trainop", "operator", "--help")
    assert res.returncode == 0, res.stderr
    res = run_in_image(images.operator, "python", "-c", "import trainop.exporter.app")
    assert res.returncode == 0, res.stderr


def test_every_console_script_in_the_operator_image_imports(images: Images) -> None:
    scripts, bad = _scripts(images.operator)
    assert bad == {}
    assert "trainop" in scripts
    assert "trainop-launch" not in scripts  # no launcher where there is no torch


def test_every_console_script_the_trainer_image_adds_imports(images: Images) -> None:
    scripts, _ = _scripts(images.trainer)
    assert "torchrun" in scripts
    # The operator's command has no business in a trainer (no kopf there).
    assert "trainop" not in scripts
    assert _broken_beyond_base(images.trainer, images.trainer_base) == {}


def test_trainer_image_runs_as_uid_1000_named_trainer_on_a_base_that_had_it(
    images: Images,
) -> None:
    # The stand-in base ships uid 1000 as `ubuntu`, like Ubuntu-based PyTorch images.
    assert image_config(images.trainer)["User"] == "1000"
    res = run_in_image(
        images.trainer,
        "python",
        "-c",
        "import getpass, os, pathlib, trainop_runtime.launch;"
        "print(os.getuid(), getpass.getuser(), os.access('/checkpoints', os.W_OK),"
        " os.access('/var/run/trainop', os.W_OK), pathlib.Path.home())",
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["1000", "trainer", "True", "True", "/home/trainer"]


def test_trainer_image_keeps_no_build_leftovers(images: Images) -> None:
    res = run_in_image(
        images.trainer,
        "sh",
        "-c",
        "ls -d /opt/trainop /tmp/trainop-runtime /tmp/*/build 2>/dev/null;"
        "find / -xdev -name 'trainop*.egg-info' 2>/dev/null",
        user="0",
    )
    assert res.stdout.strip() == "", f"left in the image:\n{res.stdout}"

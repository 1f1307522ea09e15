"""The operator's pod args and env, read by the real launcher: one contract, both sides."""

from __future__ import annotations

from typing import Any

import pytest

from tests.factories import JOB, spec
from trainop.core.build import build_worker_pod
from trainop.core.config import OperatorConfig
from trainop_runtime.launch import build_torchrun_args, parse_argv


@pytest.mark.parametrize(
    ("entrypoint", "tail"),
    [
        pytest.param(
            {"module": "pkg.train", "args": ["--lr", "3e-4"]},
            ["--module", "pkg.train", "--lr", "3e-4"],
            id="module",
        ),
        pytest.param({"script": "/w/train.py", "args": ["-x"]}, ["/w/train.py", "-x"], id="script"),
        pytest.param(
            {"command": ["/usr/bin/train", "--fast"], "args": ["--epochs", "2"]},
            ["--no-python", "/usr/bin/train", "--fast", "--epochs", "2"],
            id="command",
        ),
    ],
)
def test_launcher_turns_the_operators_pod_into_the_right_torchrun(
    entrypoint: dict[str, Any], tail: list[str]
) -> None:
    pod = build_worker_pod(JOB, spec(entrypoint=entrypoint), 0, 0, OperatorConfig())
    trainer = pod["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in trainer["env"] if "value" in e}
    entry, standalone = parse_argv(trainer["args"], env)
    argv = build_torchrun_args(env, entry, standalone=standalone)
    assert argv[-len(tail) :] == tail
    assert argv[argv.index("--nnodes") + 1] == "1:4"
    assert argv[argv.index("--rdzv-endpoint") + 1] == "llm-rdzv.llm.team-a.svc:29400"
    assert "is_host=false" in argv[argv.index("--rdzv-conf") + 1]

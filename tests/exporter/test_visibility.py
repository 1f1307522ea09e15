"""Which GPUs the sidecar exports: exactly its pod's, never the neighbours'."""

from __future__ import annotations

import pytest

from trainop.exporter.visibility import Selection, parse_gpus_file, select_gpus

NODE = ("GPU-aaaa", "GPU-bbbb", "GPU-cccc", "GPU-dddd")


@pytest.mark.parametrize(
    ("wanted", "all_gpus", "expected"),
    [
        pytest.param(None, False, Selection((), ()), id="no gpus.json: nothing, not the node"),
        pytest.param((), False, Selection((), ()), id="trainer saw no GPU: nothing"),
        pytest.param(
            ("GPU-bbbb", "GPU-dddd"),
            False,
            Selection(("GPU-bbbb", "GPU-dddd"), ()),
            id="two of four: only those two",
        ),
        pytest.param(
            ("GPU-dddd", "GPU-bbbb"),
            False,
            Selection(("GPU-bbbb", "GPU-dddd"), ()),
            id="node order, whatever the file's order",
        ),
        pytest.param(
            ("bbbb",), False, Selection(("GPU-bbbb",), ()), id="torch-style UUID without GPU-"
        ),
        pytest.param(("gpu-BBBB",), False, Selection(("GPU-bbbb",), ()), id="case-insensitive"),
        pytest.param(
            ("GPU-bbbb", "GPU-zzzz"),
            False,
            Selection(("GPU-bbbb",), ("GPU-zzzz",)),
            id="listed but not on the node: reported missing",
        ),
        pytest.param(
            ("MIG-1234",),
            False,
            Selection((), ("MIG-1234",)),
            id="MIG device: missing, not guessed",
        ),
        pytest.param(None, True, Selection(NODE, ()), id="--all-gpus without gpus.json"),
        pytest.param(("GPU-aaaa",), True, Selection(NODE, ()), id="--all-gpus wins over the file"),
    ],
)
def test_select_gpus(wanted: tuple[str, ...] | None, all_gpus: bool, expected: Selection) -> None:
    assert select_gpus(NODE, wanted, all_gpus=all_gpus) == expected


def test_parse_gpus_file_reads_uuids() -> None:
    assert parse_gpus_file('{"uuids": ["GPU-a", "GPU-b"]}') == ("GPU-a", "GPU-b")


@pytest.mark.parametrize(
    "text",
    [
        pytest.param('{"uuids": ["GPU-a"', id="torn"),
        pytest.param('["GPU-a"]', id="bare list"),
        pytest.param('{"uuid": ["GPU-a"]}', id="wrong key"),
        pytest.param('{"uuids": [0, 1]}', id="indices, not UUIDs"),
    ],
)
def test_parse_gpus_file_rejects_malformed(text: str) -> None:
    with pytest.raises(ValueError, match=r".+"):
        parse_gpus_file(text)

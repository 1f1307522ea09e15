"""The exporter as a user runs it: flags and env, HTTP endpoints, life without a GPU."""

from __future__ import annotations

import signal
import socket
import urllib.error
from pathlib import Path

import pytest

from tests.exporter.helpers import Exposition, exporter_process, http_get, write_progress
from trainop.exporter import names as n
from trainop.exporter.app import (
    ANY_IPV4,
    DEFAULT_PORT,
    ExporterConfig,
    RunningExporter,
    build_collector,
    listen_address,
    parse_config,
)
from trainop.exporter.nvml import NvmlError, load_real
from trainop_runtime import contract


def test_defaults_suit_a_pod() -> None:
    config = parse_config([], {})
    assert config.port == DEFAULT_PORT == 9400
    assert config.address == "::"  # every interface, IPv4 and IPv6: Prometheus uses the pod IP
    assert config.run_dir == Path(contract.DEFAULT_RUN_DIR)
    assert config.all_gpus is False
    assert config.identity == {}
    assert config.node is None


def test_env_configures_everything_and_flags_win() -> None:
    env = {
        "TRAINOP_EXPORTER_PORT": "9500",
        "TRAINOP_EXPORTER_ALL_GPUS": "true",
        "TRAINOP_EXPORTER_STALE_SECONDS": "60",
        "TRAINOP_EXPORTER_POWERCAP_ROOT": "",
        "TRAINOP_EXPORTER_SAMPLE_SECONDS": "2.5",
        "TRAINOP_EXPORTER_NVML_TIMEOUT_SECONDS": "3",
        contract.ENV_RUN_DIR: "/shared/run",
        contract.ENV_JOB_NAME: "llama",
        contract.ENV_JOB_NAMESPACE: "team-a",
        contract.ENV_POD_NAME: "llama-worker-3",
        contract.ENV_NODE_NAME: "gpu-node-7",
    }
    config = parse_config(["--port", "9600"], env)
    assert config.port == 9600
    assert config.all_gpus is True
    assert config.stale_after_seconds == 60
    assert config.powercap_root is None
    assert config.sample_seconds == 2.5
    assert config.nvml_timeout_seconds == 3
    assert config.run_dir == Path("/shared/run")
    assert config.identity == {
        "trainingjob": "llama",
        "trainingjob_namespace": "team-a",
        "trainingjob_pod": "llama-worker-3",
    }
    assert config.node == "gpu-node-7"


def test_identity_from_env_never_collides_with_target_labels(tmp_path: Path) -> None:
    # Values that look like target label names stay values of our own labels.
    env = {
        contract.ENV_JOB_NAME: "job",
        contract.ENV_JOB_NAMESPACE: "namespace",
        contract.ENV_POD_NAME: "pod",
        contract.ENV_NODE_NAME: "node",
    }
    argv = ["--address", "127.0.0.1", "--port", "0", "--run-dir", str(tmp_path)]
    config = parse_config([*argv, "--fake-nvml-gpus", "1", "--all-gpus"], env)
    write_progress(tmp_path, time=None)
    exporter = RunningExporter(config, build_collector(config))
    try:
        expo = Exposition(http_get(f"http://127.0.0.1:{exporter.port}/metrics")[1])
    finally:
        exporter.stop()
    ours = [s for s in expo.samples if not s.name.startswith(n.PROCESS_NAMESPACE + "_process")]
    assert {s.name for s in ours} >= {n.GPU_POWER, n.TRAINING_STEP}
    for sample in ours:
        assert not n.RESERVED_TARGET_LABELS & set(sample.labels), sample
        assert sample.labels[n.L_TRAININGJOB] == "job"
        assert sample.labels[n.L_TRAININGJOB_NAMESPACE] == "namespace"
        assert sample.labels[n.L_TRAININGJOB_POD] == "pod"
        # The node, from the downward API, labels what runs on it: the GPUs.
        assert sample.labels.get(n.L_NODE) == ("node" if n.L_GPU_UUID in sample.labels else None)


@pytest.mark.parametrize("label", sorted(n.RESERVED_TARGET_LABELS))
def test_an_identity_with_a_target_label_is_refused_at_start(tmp_path: Path, label: str) -> None:
    config = ExporterConfig(run_dir=tmp_path, identity={label: "x"}, fake_nvml_gpus=1)
    with pytest.raises(ValueError, match=rf"\['{label}'\] are target labels") as err:
        build_collector(config)
    assert f"exported_{label}" in str(err.value)
    assert "trainingjob, trainingjob_namespace, trainingjob_pod instead" in str(err.value)


def test_http_endpoints(tmp_path: Path) -> None:
    config = ExporterConfig(
        address="127.0.0.1", port=0, run_dir=tmp_path, fake_nvml_gpus=2, all_gpus=True
    )
    exporter = RunningExporter(config, build_collector(config))
    base = f"http://127.0.0.1:{exporter.port}"
    try:
        status, body = http_get(f"{base}/metrics")
        assert status == 200
        assert f"{n.GPU_UP} 1.0" in body
        assert n.EXPORTER_PROCESS_CPU in body
        assert http_get(f"{base}/healthz") == (200, "ok\n")
        with pytest.raises(urllib.error.HTTPError) as err:
            http_get(f"{base}/")
        assert err.value.code == 404
    finally:
        exporter.stop()


@pytest.mark.parametrize(
    ("requested", "dual_stack", "bound"),
    [
        pytest.param("::", True, "::", id="default, IPv6 host: dual-stack"),
        pytest.param("::", False, ANY_IPV4, id="default, no IPv6: IPv4 only"),
        pytest.param(ANY_IPV4, True, ANY_IPV4, id="asked for IPv4 only"),
        pytest.param("127.0.0.1", False, "127.0.0.1", id="one address"),
    ],
)
def test_listen_address(requested: str, dual_stack: bool, bound: str) -> None:
    assert listen_address(requested, dual_stack=dual_stack) == bound


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.parametrize(
    ("host_dual_stack", "bound", "reachable_on"),
    [
        # Where the host has no IPv6 loopback (a container with IPv6 off) only IPv4 is probed.
        pytest.param(
            True, "::", ["127.0.0.1", *(["::1"] if _ipv6_loopback() else [])], id="dual-stack"
        ),
        pytest.param(False, ANY_IPV4, ["127.0.0.1"], id="IPv4 fallback"),
    ],
)
def test_default_address_serves_ipv4_and_ipv6(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    host_dual_stack: bool,
    bound: str,
    reachable_on: list[str],
) -> None:
    if not host_dual_stack:
        monkeypatch.setattr(socket, "has_dualstack_ipv6", lambda: False)
    config = ExporterConfig(port=0, run_dir=tmp_path, fake_nvml_gpus=1, all_gpus=True)
    exporter = RunningExporter(config, build_collector(config))
    try:
        assert exporter.address == bound
        for host in reachable_on:
            url_host = f"[{host}]" if ":" in host else host
            status, body = http_get(f"http://{url_host}:{exporter.port}/metrics")
            assert status == 200, host
            assert f"{n.GPU_UP} 1.0" in body, host
    finally:
        exporter.stop()


def _real_nvml_works() -> bool:
    try:
        load_real().init()
    except NvmlError:
        return False
    return True


@pytest.mark.skipif(_real_nvml_works(), reason="needs a machine WITHOUT a usable NVIDIA driver")
def test_without_a_gpu_it_serves_training_metrics_and_never_exits(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_progress(run_dir, time=None)  # no `time`: freshness from the file's mtime
    with exporter_process(run_dir) as exporter:  # the real pynvml, no driver here
        for _ in range(5):
            expo = exporter.scrape()
            assert expo.value(n.GPU_UP) == 0
            assert expo.value(n.TRAINING_UP) == 1
            assert expo.value(n.TRAINING_STEP) == 120
        assert exporter.proc.poll() is None
        # Said once, clearly, not once per scrape.
        assert exporter.log().count("No usable NVIDIA GPU here") == 1
        assert "LibraryNotFound" in exporter.log()
        exporter.proc.send_signal(signal.SIGTERM)
        assert exporter.proc.wait(timeout=10) == 0


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with exporter_process(tmp_path, "--fake-nvml-gpus", "1") as first:
        with (
            pytest.raises(AssertionError, match="cannot listen"),
            exporter_process(tmp_path, "--port", str(first.port)),
        ):
            pass  # pragma: no cover
        assert first.proc.poll() is None  # the one already serving is unharmed


@pytest.mark.parametrize(
    "env",
    [
        pytest.param({"TRAINOP_EXPORTER_PORT": "http"}, id="port"),
        pytest.param({"TRAINOP_EXPORTER_STALE_SECONDS": "5m"}, id="stale seconds"),
        pytest.param({"TRAINOP_EXPORTER_LOG_LEVEL": "chatty"}, id="log level"),
        pytest.param({"TRAINOP_EXPORTER_SAMPLE_SECONDS": "5s"}, id="sample seconds"),
        # A sampler that never waits would spin a core; a zero timeout would mark every GPU down.
        pytest.param({"TRAINOP_EXPORTER_SAMPLE_SECONDS": "0"}, id="sample seconds 0"),
        pytest.param({"TRAINOP_EXPORTER_NVML_TIMEOUT_SECONDS": "-1"}, id="negative timeout"),
    ],
)
def test_bad_env_is_a_usage_error_not_a_traceback(
    env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_config([], env)
    assert exit_info.value.code == 2
    assert "invalid" in capsys.readouterr().err

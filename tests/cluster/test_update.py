"""Spec edits on a running job, on the real control plane (kwok runs the pods).

An edit to a field that shapes the workers replaces every worker together, with an
Event and the SpecApplied condition, not counted; old and new workers never run side
by side. An edit the API server refuses stops nothing. A scale within range restarts
nobody. The rendezvous port is refused at apply."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from tests.cluster.conftest import Cluster, Operator, wait_for, wait_until
from tests.cluster.test_operator import status, tj, until_running, workers

pytestmark = pytest.mark.cluster


def _patch(c: Cluster, ns: str, name: str, spec: dict[str, Any]) -> None:
    c.kubectl(
        "patch", "trainingjob", name, "-n", ns, "--type=merge", "-p", json.dumps({"spec": spec})
    )


def _images(pods: list[dict[str, Any]]) -> set[str]:
    return {
        ctr["image"]
        for p in pods
        for ctr in p["spec"]["containers"]
        if ctr["name"] == "trainer" and p["status"].get("phase") == "Running"
    }


def _cond(st: dict[str, Any], type_: str) -> tuple[str, str] | None:
    found = next((x for x in st.get("conditions", []) if x["type"] == type_), None)
    return None if found is None else (found["status"], found["reason"])


def _started(c: Cluster, ns: str, name: str) -> set[str]:
    """UIDs of the two running workers of a newly applied job."""
    c.apply(tj(name), ns)
    return {p["metadata"]["uid"] for p in until_running(c, ns, name, 2)}


def test_an_image_edit_replaces_every_worker_together_and_is_not_counted(
    operator: Operator, ns: str
) -> None:
    c = operator.cluster
    old = _started(c, ns, "edit")
    mixed: list[set[str]] = []
    stop = threading.Event()

    def watch_for_a_mix() -> None:  # every poll: the live workers run one image
        while not stop.is_set():
            seen = _images(workers(c, ns, "edit"))
            if len(seen) > 1:
                mixed.append(seen)

    watcher = threading.Thread(target=watch_for_a_mix)
    watcher.start()
    try:
        _patch(c, ns, "edit", {"image": "trainer:2"})
        pods = wait_for(
            "two running workers, both on trainer:2",
            lambda: (
                ps
                if len(ps := workers(c, ns, "edit")) == 2 and _images(ps) == {"trainer:2"}
                else None
            ),
            timeout=60,
        )
    finally:
        stop.set()
        watcher.join()
    assert mixed == []
    assert not old & {p["metadata"]["uid"] for p in pods}
    st = wait_until(
        "SpecApplied",
        lambda: status(c, ns, "edit"),
        lambda s: (
            _cond(s, "SpecApplied") is not None and _cond(s, "SpecApplied") == ("True", "Applied")
        ),
    )
    assert st["restarts"] == 0
    assert st["jobGeneration"] == 1
    notes = [e for e in c.events(ns, "edit") if e["reason"] == "SpecChanged"]
    assert len(notes) == 1
    assert "spec.image" in notes[0]["message"]
    env = {e["name"]: e.get("value") for e in pods[0]["spec"]["containers"][0]["env"]}
    assert env["PET_RDZV_ID"].endswith("-1")  # a fresh rendezvous for the new generation


def test_an_edit_the_api_server_refuses_stops_nothing(operator: Operator, ns: str) -> None:
    c = operator.cluster
    before = _started(c, ns, "keep")
    # Passes the schema; pod validation refuses a port above 65535.
    bad = {"containers": [{"name": "trainer", "ports": [{"containerPort": 99999}]}]}
    _patch(c, ns, "keep", {"image": "trainer:2", "podTemplate": {"spec": bad}})
    st = wait_until(
        "UpdateRejected",
        lambda: status(c, ns, "keep"),
        lambda s: _cond(s, "SpecValid") == ("False", "UpdateRejected"),
    )
    spec_valid = next(x for x in st["conditions"] if x["type"] == "SpecValid")
    assert "containerPort" in spec_valid["message"]
    assert st["phase"] == "Running"
    assert {p["metadata"]["uid"] for p in workers(c, ns, "keep")} == before
    wait_for(
        "an UpdateRejected Warning",
        lambda: [e for e in c.events(ns, "keep") if e["reason"] == "UpdateRejected"],
    )
    # Fixing the edit applies it.
    _patch(c, ns, "keep", {"podTemplate": {"spec": {"containers": [{"name": "trainer"}]}}})
    wait_until(
        "SpecValid again",
        lambda: status(c, ns, "keep"),
        lambda s: _cond(s, "SpecValid") == ("True", "Valid"),
        timeout=60,
    )
    wait_for(
        "workers on trainer:2", lambda: _images(workers(c, ns, "keep")) == {"trainer:2"}, timeout=60
    )


def test_a_scale_within_range_restarts_nobody_and_the_port_is_fixed(
    operator: Operator, ns: str
) -> None:
    c = operator.cluster
    before = _started(c, ns, "grow")
    c.kubectl("scale", "trainingjob", "grow", "-n", ns, "--replicas=3")
    pods = until_running(c, ns, "grow", 3)
    assert before < {p["metadata"]["uid"] for p in pods}
    assert status(c, ns, "grow")["jobGeneration"] == 0
    said = c.kubectl(
        "patch",
        "trainingjob",
        "grow",
        "-n",
        ns,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"rendezvous": {"port": 29500}}}),
        check=False,
    )
    assert "spec.rendezvous.port cannot change once the job exists" in said

"""Bad input against the real API server: what it holds afterwards is the proof.

A spec the schema accepts but that cannot run ends with SpecValid=False and a Warning
Event saying why; nothing is created for it, the operator stays up and quiet, and the
next job in the same namespace runs.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.cluster.conftest import Operator, wait_for, wait_until
from tests.cluster.test_operator import status, tj, until_running, workers

pytestmark = pytest.mark.cluster


def _noise(operator: Operator, ns: str, name: str) -> tuple[str, int, int]:
    """What a retry loop on one job would change: its resourceVersion (status rewrites),
    its Events, and the operator's log lines about it (the metrics are not per job)."""
    c = operator.cluster
    version = c.get("trainingjob", name, ns)["metadata"]["resourceVersion"]
    events = sum(int(e.get("count") or 1) for e in c.events(ns, name))
    lines = operator.log.read_text(errors="replace").splitlines()
    said = sum(1 for line in lines if ns in line and name in line)
    return version, events, said


@pytest.mark.parametrize(
    ("spec", "reason", "says"),
    [
        pytest.param(
            {"scheduling": {"priorityClassName": "no-such-class"}},
            "AdmissionRejected",
            "no PriorityClass with name no-such-class was found",
            id="unknown-priority-class",
        ),
        pytest.param(
            # A negative integer passes the CRD's int-or-string schema; the model stops it.
            {"resources": {"gpus": 1, "cpu": -2}},
            "InvalidSpec",
            "spec.resources.cpu: -2 is negative",
            id="negative-cpu",
        ),
    ],
)
def test_refused_spec_gets_condition_and_event_creates_nothing_and_does_not_retry(
    operator: Operator, ns: str, spec: dict[str, Any], reason: str, says: str
) -> None:
    c = operator.cluster
    c.apply(tj("bad", **spec), ns)
    st = wait_until(reason, lambda: status(c, ns, "bad"), lambda s: s.get("reason") == reason)
    assert st["phase"] == "Pending"
    assert says in st["message"]
    cond = next(x for x in st["conditions"] if x["type"] == "SpecValid")
    assert (cond["status"], cond["reason"]) == ("False", reason)
    wait_for(
        "a Warning Event with the API server's reason",
        lambda: [e for e in c.events(ns, "bad") if e["type"] == "Warning" and says in e["message"]],
    )
    assert c.list("pods", ns) == []
    assert c.list("services", ns) == []

    settled = _noise(operator, ns, "bad")
    time.sleep(10)
    assert _noise(operator, ns, "bad") == settled, "the operator keeps retrying a refused job"
    assert c.list("pods", ns) == []
    assert operator.alive()

    c.apply(tj("good"), ns)
    until_running(c, ns, "good", 2)
    assert status(c, ns, "bad")["reason"] == reason


@pytest.mark.parametrize(
    ("name", "spec", "says"),
    [
        pytest.param("words", {"resources": {"cpu": "4 cores"}}, "spec.resources.cpu", id="cpu"),
        pytest.param("gpu", {"resources": {"gpuResourceName": "gpu"}}, "gpuResourceName", id="gpu"),
        pytest.param("img", {"image": "trainer:1 --privileged"}, "spec.image", id="image-space"),
        pytest.param("my.job", {}, "metadata.name must start with a letter", id="dotted-name"),
        # A deadline that once wedged a job (OverflowError while planning): refused at apply.
        pytest.param(
            "forever",
            {"runPolicy": {"activeDeadlineSeconds": 300_000_000_000}},
            "spec.runPolicy.activeDeadlineSeconds: Invalid value: 300000000000: "
            "spec.runPolicy.activeDeadlineSeconds in body should be less than or equal to 31536000",
            id="huge-deadline",
        ),
        pytest.param(
            "slow",
            {"failurePolicy": {"maxBackoffSeconds": 10**12}},
            "should be less than or equal to 86400",
            id="huge-backoff",
        ),
    ],
)
def test_what_the_schema_can_express_is_refused_before_the_operator_sees_it(
    operator: Operator, ns: str, name: str, spec: dict[str, Any], says: str
) -> None:
    c = operator.cluster
    out = c.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(tj(name, **spec)), check=False)
    assert says in out
    assert c.get_or_none("trainingjob", name, ns) is None
    assert c.list("pods", ns) == []


def test_a_job_that_cannot_be_planned_shows_why_and_the_operator_serves_the_others(
    operator: Operator, ns: str
) -> None:
    """Planning that raises (here: a status admitted at the end of time, so a one-year
    deadline overflows datetime) once meant a traceback every 30 s and nothing else."""
    c = operator.cluster
    c.apply(tj("cursed", runPolicy={"activeDeadlineSeconds": 31536000}), ns)
    until_running(c, ns, "cursed", 2)
    c.kubectl(
        "patch",
        "trainingjob",
        "cursed",
        "-n",
        ns,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": {"admissionTime": "9999-12-31T00:00:00Z"}}),
    )
    st = wait_until(
        "ReconcileError",
        lambda: status(c, ns, "cursed"),
        lambda s: any(
            x["type"] == "ReconcileError" and x["status"] == "True" for x in s.get("conditions", [])
        ),
    )
    cond = next(x for x in st["conditions"] if x["type"] == "ReconcileError")
    assert "OverflowError" in cond["message"]
    wait_for(
        "one ReconcileError Warning",
        lambda: [e for e in c.events(ns, "cursed") if e["reason"] == "ReconcileError"],
    )
    c.kubectl("scale", "trainingjob", "cursed", "-n", ns, "--replicas=3")  # woken again
    c.apply(tj("fine"), ns)
    until_running(c, ns, "fine", 2)
    events = [e for e in c.events(ns, "cursed") if e["reason"] == "ReconcileError"]
    assert sum(int(e.get("count") or 1) for e in events) == 1
    assert len(workers(c, ns, "cursed")) == 2  # left as it was: the scale was not planned
    assert operator.alive()


def test_a_namespace_being_deleted_is_left_alone_without_warnings(
    operator: Operator, ns: str
) -> None:
    """Its pods go before its jobs: once that meant WorkerFailed, recreate attempts (403)
    and tracebacks. Now the operator at most says so in one INFO line."""
    c = operator.cluster
    c.apply(tj("doomed", replicas=3), ns)
    until_running(c, ns, "doomed", 3)
    start = operator.log.stat().st_size
    c.kubectl("delete", "namespace", ns, "--wait=false")
    wait_for("namespace gone", lambda: c.get_or_none("namespace", ns, "") is None, timeout=90)
    time.sleep(2)
    said = operator.log.read_bytes()[start:].decode(errors="replace").splitlines()
    about = [line for line in said if ns in line]
    assert [line for line in about if " INFO " not in line] == []
    assert "Traceback" not in "\n".join(said)
    assert operator.alive()

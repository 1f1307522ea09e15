"""Split brain: a leader paused past its lease, then woken, sends no write at all.

Two operator replicas with leader election on the real control plane. The leader is
SIGSTOPped while a worker fails and the job is scaled; the standby takes the lease and
does the work. Then the old leader gets SIGCONT with all of that in its watch streams.
Every write it attempts after waking would be in the API server's audit log under its
user agent; there must be none, and it must step down at once.
"""

from __future__ import annotations

import json
import os
import signal
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.conftest import Operator, localcluster, wait_for
from tests.cluster.test_operator import tj, until_running

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def _writes_by(agent: str, since: float) -> list[dict[str, Any]]:
    """Audit events of writes whose user agent names `agent`, received after `since`."""
    found = []
    for line in localcluster.audit_log().read_text(errors="replace").splitlines():
        event = json.loads(line)
        if agent not in event.get("userAgent", ""):
            continue
        when = datetime.fromisoformat(event["requestReceivedTimestamp"].replace("Z", "+00:00"))
        if when.timestamp() >= since:
            found.append(event)
    return found


def _holder(operator: Operator, ns: str) -> str:
    lease = operator.cluster.get_or_none("lease", "trainop-operator", ns) or {}
    return str((lease.get("spec") or {}).get("holderIdentity") or "")


def test_a_paused_leader_writes_nothing_after_waking_and_steps_down_at_once(
    operator: Operator, ns: str, tmp_path: Path
) -> None:
    c = operator.cluster
    operator.stop()  # the session operator runs without election; keep it out of the way
    old, new = Operator(c, tmp_path / "old.log"), Operator(c, tmp_path / "new.log")
    flags = ["--leader-elect", "--lease-namespace", ns]
    started = time.time()
    try:
        old.start(args=flags, POD_NAME="fence-old")
        wait_for("fence-old leads", lambda: _holder(operator, ns) == "fence-old")
        new.start(args=flags, POD_NAME="fence-new")
        c.apply(tj("split", replicas=2), ns)
        until_running(c, ns, "split", 2)
        assert old.proc is not None
        os.killpg(old.proc.pid, signal.SIGSTOP)
        # Work the paused leader will find in its watch streams when it wakes.
        c.kubectl("delete", "pod", "split-worker-0", "-n", ns, "--wait=false")
        c.kubectl("scale", "trainingjob/split", "-n", ns, "--replicas=3")
        wait_for("fence-new leads", lambda: _holder(operator, ns) == "fence-new", timeout=60)
        until_running(c, ns, "split", 3, timeout=60)
        time.sleep(1)
        woke = time.time()
        t0 = time.monotonic()
        os.killpg(old.proc.pid, signal.SIGCONT)
        old.proc.wait(timeout=60)
        stepped_down = time.monotonic() - t0
        time.sleep(2)  # anything still in flight reaches the audit log
        assert _writes_by("trainop-operator/fence-old", woke) == []
        # Kopf's own client has its own user agent: it must not write either.
        assert _writes_by("kopf", woke) == []
        # The recording works: the same leader's writes before the pause are there.
        assert _writes_by("trainop-operator/fence-old", started)
        assert old.proc.returncode != 0  # restarted by Kubernetes as a standby
        said = old.log.read_text(errors="replace")
        assert "refusing writes and stopping" in said or "lost the lease" in said
        report = os.environ.get("TRAINOP_FENCING_REPORT")
        if report:
            Path(report).write_text(json.dumps({"step_down_seconds": round(stepped_down, 2)}))
        assert stepped_down < 30, f"took {stepped_down:.1f}s to step down"
    finally:
        if old.proc is not None and old.proc.poll() is None:
            os.killpg(old.proc.pid, signal.SIGCONT)
        old.stop()
        new.stop()
        operator.start()

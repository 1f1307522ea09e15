"""The operator at scale on the real local control plane, with kwok nodes.

    .venv/bin/python bench/scale/bench_scale.py [--jobs 200 1000] [--idle-seconds 120]

For each N: a fresh operator process; N TrainingJobs x 8 workers created by 8
concurrent clients; all Running; idle; 10% of the workers failed at once; every job
deleted. It records, each with the load average next to it:
  - jobs/s: first job create -> last worker pod create (API server audit log);
  - the operator's RSS before and after, and its peak (VmHWM);
  - idle CPU (share of one core) and API requests/s over --idle-seconds;
  - API requests by verb and resource in each phase (the operator's own counters);
  - the failure -> replacement time of every failed worker (audit log: kwok's status
    write that failed the pod -> the operator's create of its replacement);
  - events reconciled late: watch events that waited > 1 s for their job's reconcile
    (trainop_operator_queue_wait_seconds);
  - reads of jobs that no longer exist, while everything is deleted (404s on GET).
Wall-clock figures on a shared 2-core machine: the control plane, kwok and the
operator share it, so rates are lower bounds for a real cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import random
import re
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "bench" / "operator"))

from bench_operator import job as operator_job  # noqa: E402
from tests.cluster.conftest import Cluster, Operator, localcluster  # noqa: E402

from trainop.kube.client import Kube, job_path  # noqa: E402

NS = "scale"
WORKERS = 8
CLIENTS = 8
PODS_PER_NODE = 500
BENCH_AGENT = "trainop-bench-scale"
LATE_SECONDS = 1.0
PODS = f"/api/v1/namespaces/{NS}/pods"
WORKER_SEL = {"labelSelector": "trainop.dev/role=worker"}


def job(name: str) -> dict[str, Any]:
    """bench/operator's job (backoff 0, a budget no burst exhausts), 1 GPU per worker."""
    body = operator_job(name, WORKERS)
    body["metadata"]["namespace"] = NS
    body["spec"]["resources"] = {"gpus": 1}
    return body


def node(name: str) -> dict[str, Any]:
    body = localcluster.gpu_node(name, PODS_PER_NODE)
    body["status"]["capacity"]["pods"] = str(PODS_PER_NODE)
    body["status"]["allocatable"] = dict(body["status"]["capacity"])
    body["metadata"]["labels"]["trainop.dev/bench"] = "scale"
    return dict(body)


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# --- the operator process, from /proc -------------------------------------------------
def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def control_plane_cpu() -> dict[str, float]:
    """CPU seconds used so far by each control-plane process (hack/localcluster.py's pids)."""
    out = {}
    for pid_file in sorted((localcluster.cluster_dir() / "pids").glob("*.pid")):
        try:
            out[pid_file.stem] = cpu_seconds(int(pid_file.read_text()))
        except (OSError, ValueError):
            continue
    return out


def cpu_shares(before: dict[str, float], after: dict[str, float], wall: float) -> dict[str, float]:
    """Share of one core each process used over `wall` seconds."""
    return {k: round((after[k] - before.get(k, 0.0)) / wall, 3) for k in sorted(after)}


def memory_mb(pid: int) -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = round(int(value.split()[0]) / 1024, 1)
    return {"rss_mb": out["VmRSS"], "peak_rss_mb": out["VmHWM"]}


# --- the operator's own metrics -------------------------------------------------------
def requests(text: str) -> dict[str, float]:
    out = {}
    pattern = r'trainop_operator_api_requests_total\{resource="([^"]+)",verb="([^"]+)"\} (\S+)'
    for m in re.finditer(pattern, text):
        out[f"{m.group(2)} {m.group(1)}"] = float(m.group(3))
    return out


def errors(text: str) -> dict[str, float]:
    out = {}
    pattern = (
        r'trainop_operator_api_errors_total\{code="([^"]+)",resource="([^"]+)",verb="([^"]+)"\}'
        r" (\S+)"
    )
    for m in re.finditer(pattern, text):
        out[f"{m.group(3)} {m.group(2)} {m.group(1)}"] = float(m.group(4))
    return out


WAIT = "trainop_operator_queue_wait_seconds"  # event -> the reconcile that sees it
DELAY = "trainop_operator_queue_delay_seconds"  # ... beyond its job's reconcile in progress


def queue_wait(text: str, metric: str = WAIT) -> tuple[float, float]:
    """(events reconciled, of which late: over LATE_SECONDS) from a queue histogram."""
    total = late_free = 0.0
    for m in re.finditer(rf"{metric}_count (\S+)", text):
        total = float(m.group(1))
    for m in re.finditer(rf'{metric}_bucket\{{le="([^"]+)"\}} (\S+)', text):
        if float(m.group(1)) == LATE_SECONDS:
            late_free = float(m.group(2))
    return total, total - late_free


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, int]:
    out = {k: int(after[k] - before.get(k, 0)) for k in sorted(after)}
    return {k: v for k, v in out.items() if v}


# --- the API server's audit log -------------------------------------------------------
def stamp(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["stageTimestamp"].replace("Z", "+00:00")).timestamp()


class Audit:
    """The audit log of the bench's namespace, read on as it grows (write requests
    only: that is what the cluster's audit policy records)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._offset = 0

    def poll(self) -> list[dict[str, Any]]:
        with localcluster.audit_log().open("rb") as f:
            f.seek(self._offset)
            chunk = f.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]  # a line still being written waits
        self._offset += len(complete)
        for line in complete.decode(errors="replace").splitlines():
            event = json.loads(line)
            if event.get("objectRef", {}).get("namespace") == NS:
                self.events.append(event)
        return self.events

    def since(self, t0: float) -> list[dict[str, Any]]:
        return [e for e in self.poll() if stamp(e) >= t0]


AUDIT = Audit()


def operator_creates(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        e
        for e in events
        if e["verb"] == "create"
        and e["objectRef"].get("resource") == "pods"
        and not e["objectRef"].get("subresource")
        and "trainop-operator" in e.get("userAgent", "")
        and e.get("responseStatus", {}).get("code", 0) < 300
        and "-worker-" in (e["objectRef"].get("name") or "")
    ]


def replacements(events: list[dict[str, Any]], failed: set[str]) -> list[float]:
    """Per failed pod: kwok's status write that failed it -> the operator's create of
    the pod of the same name that replaces it."""
    failed_at: dict[str, float] = {}
    replaced_at: dict[str, float] = {}
    for e in sorted(events, key=stamp):
        ref = e["objectRef"]
        name = ref.get("name") or ""
        if name not in failed:
            continue
        if (
            ref.get("subresource") == "status"
            and "kwok" in e.get("userAgent", "")
            and name not in failed_at
        ):
            failed_at[name] = stamp(e)
        elif operator_creates([e]) and name in failed_at and name not in replaced_at:
            replaced_at[name] = stamp(e)
    return [replaced_at[n] - failed_at[n] for n in replaced_at]


def summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    return {
        "n": len(values),
        "p50_s": round(statistics.median(ordered), 3),
        "p99_s": round(ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)], 3),
        "max_s": round(ordered[-1], 3),
    }


# --- the client side ------------------------------------------------------------------
async def bounded(calls: list[Any], concurrency: int = CLIENTS) -> list[Any]:
    gate = asyncio.Semaphore(concurrency)

    async def one(call: Any) -> Any:
        async with gate:
            return await call

    return list(await asyncio.gather(*(one(c) for c in calls)))


async def count(kube: Kube, path: str, query: dict[str, str]) -> int:
    """How many objects a LIST would return, without transferring them (the API
    server leaves remainingItemCount out when a selector is given: none here)."""
    page = await kube.request("list", path, resource="count", query={**query, "limit": "1"})
    return len(page.get("items", [])) + int(page["metadata"].get("remainingItemCount") or 0)


async def wait(what: str, pred: Any, limit: float, every: float = 1.0) -> float:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if await pred():
            return time.time()
        await asyncio.sleep(every)
    raise TimeoutError(f"not reached in {limit:.0f}s: {what}")


class Run:
    """One size: the operator process, a client, and the metrics read between phases."""

    def __init__(self, n: int, kube: Kube, op: Operator) -> None:
        assert op.proc is not None
        self.n, self.kube, self.op, self.pid = n, kube, op, op.proc.pid
        self.metrics = op.metrics()

    def advance(self) -> tuple[str, str]:
        """(metrics before, metrics now): the phase that just ended is the difference."""
        before, self.metrics = self.metrics, self.op.metrics()
        return before, self.metrics

    def cpu(self) -> dict[str, float]:
        return {**control_plane_cpu(), "trainop-operator": cpu_seconds(self.pid)}

    async def create(self) -> dict[str, Any]:
        cpu0 = self.cpu()
        t0 = time.time()
        await bounded(
            [
                self.kube.request(
                    "create", job_path(NS), resource="trainingjobs", body=job(f"j{i}")
                )
                for i in range(self.n)
            ]
        )
        created = time.time()

        async def all_pods() -> bool:
            names = {e["objectRef"]["name"] for e in operator_creates(AUDIT.since(t0))}
            return len(names) >= self.n * WORKERS

        await wait("every worker pod exists", all_pods, limit=1800)
        creates = operator_creates(AUDIT.since(t0))
        last_pod = max(stamp(e) for e in creates)
        cpu1 = self.cpu()
        before, now = self.advance()
        out: dict[str, Any] = {
            "clients": CLIENTS,
            "jobs_created_in_s": round(created - t0, 2),
            "first_job_to_last_worker_pod_s": round(last_pod - t0, 2),
            "jobs_per_s": round(self.n / (last_pod - t0), 2),
            "worker_pods_created": len({e["objectRef"]["name"] for e in creates}),
            # Who the 2 cores went to while the jobs were created: the operator's share
            # against the control plane's says which one limits the rate here.
            "cpu_share_of_a_core_by_process": cpu_shares(cpu0, cpu1, time.time() - t0),
            "api_requests": delta(requests(now), requests(before)),
            "api_errors": delta(errors(now), errors(before)),
            "load_average_1_5_15": load(),
        }
        running_at = await wait("every job Running", self.all_running, limit=1800)
        out["all_running_after_s"] = round(running_at - t0, 2)
        return out

    async def all_running(self) -> bool:
        jobs = (await self.kube.request("list", job_path(NS), resource="trainingjobs"))["items"]
        ok = [
            j
            for j in jobs
            if (j.get("status") or {}).get("phase") == "Running"
            and (j.get("status") or {}).get("readyReplicas") == WORKERS
        ]
        return len(ok) == self.n

    async def idle(self, seconds: float) -> dict[str, Any]:
        await asyncio.sleep(10)  # the last status writes and watch events drain
        self.advance()
        cpu0, t0 = cpu_seconds(self.pid), time.monotonic()
        await asyncio.sleep(seconds)
        cpu1, idle_for = cpu_seconds(self.pid), time.monotonic() - t0
        before, now = self.advance()
        idle_requests = delta(requests(now), requests(before))
        return {
            "seconds": round(idle_for, 1),
            "cpu_share_of_a_core": round((cpu1 - cpu0) / idle_for, 4),
            "api_requests_per_s": round(sum(idle_requests.values()) / idle_for, 3),
            "api_requests": idle_requests,
            "events_reconciled": int(queue_wait(now)[0] - queue_wait(before)[0]),
            **memory_mb(self.pid),
            "load_average_1_5_15": load(),
        }

    async def fail(self, seed: int) -> dict[str, Any]:
        pods = (await self.kube.request("list", PODS, resource="pods", query=WORKER_SEL))["items"]
        # A seeded choice, so a rerun fails the same workers (not a security use).
        rng = random.Random(seed)  # noqa: S311
        victims = rng.sample(sorted(p["metadata"]["name"] for p in pods), k=len(pods) // 10)
        t0 = time.time()
        await bounded(
            [
                self.kube.patch_pod_annotations(NS, name, {"kwok.trainop.dev/exit-code": "1"})
                for name in victims
            ]
        )
        await wait("every failed worker replaced and Running", self.all_running, limit=1800)
        await asyncio.sleep(5)
        before, now = self.advance()
        times = replacements(AUDIT.since(t0), set(victims))
        return {
            "workers_failed": len(victims),
            "failure_to_replacement_created": summary(times),
            "replacements_seen_in_audit_log": len(times),
            "api_requests": delta(requests(now), requests(before)),
            "events_reconciled": int(queue_wait(now)[0] - queue_wait(before)[0]),
            "events_late_over_1s": int(queue_wait(now)[1] - queue_wait(before)[1]),
            "events_delayed_over_1s_by_the_queue": int(
                queue_wait(now, DELAY)[1] - queue_wait(before, DELAY)[1]
            ),
            "load_average_1_5_15": load(),
        }

    async def delete(self) -> dict[str, Any]:
        cpu0, t0 = cpu_seconds(self.pid), time.time()
        await bounded(
            [
                self.kube.request("delete", job_path(NS, f"j{i}"), resource="trainingjobs")
                for i in range(self.n)
            ]
        )

        async def gone() -> bool:
            pods = await count(self.kube, PODS, {})
            return pods == 0 and not await count(self.kube, job_path(NS), {})

        gone_at = await wait("every job and pod gone", gone, limit=1800)
        await asyncio.sleep(5)
        before, now = self.advance()
        errs = delta(errors(now), errors(before))
        return {
            "all_gone_after_s": round(gone_at - t0, 2),
            "operator_cpu_s": round(cpu_seconds(self.pid) - cpu0, 2),
            "api_requests": delta(requests(now), requests(before)),
            "api_errors": errs,
            "reads_of_jobs_gone": errs.get("get trainingjobs 404", 0),
            "load_average_1_5_15": load(),
        }


async def run_size(
    n: int, cluster: Cluster, op: Operator, idle_seconds: float, seed: int
) -> dict[str, Any]:
    kube = await Kube.connect(str(cluster.kubeconfig), pool=CLIENTS * 2, user_agent=BENCH_AGENT)
    try:
        run = Run(n, kube, op)
        start = run.metrics
        out: dict[str, Any] = {"jobs": n, "workers_per_job": WORKERS}
        out["operator_at_start"] = {**memory_mb(run.pid), "load_average_1_5_15": load()}
        out["create"] = await run.create()
        out["idle"] = await run.idle(idle_seconds)
        out["failure_burst"] = await run.fail(seed)
        out["delete"] = await run.delete()
        out["operator_at_end"] = {**memory_mb(run.pid), "load_average_1_5_15": load()}
        total, late = (
            a - b for a, b in zip(queue_wait(run.metrics), queue_wait(start), strict=True)
        )
        delayed = queue_wait(run.metrics, DELAY)[1] - queue_wait(start, DELAY)[1]
        out["events"] = {
            "reconciled": int(total),
            "late_over_1s": int(late),
            "delayed_over_1s_by_the_queue": int(delayed),
        }
    finally:
        await kube.close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, nargs="+", default=[200, 1000])
    parser.add_argument("--idle-seconds", type=float, default=120)
    parser.add_argument("--seed", type=int, default=20261203)
    parser.add_argument("--out", default=str(ROOT / "bench" / "scale" / "results.json"))
    args = parser.parse_args()
    kubeconfig = localcluster.up()
    cluster = Cluster(kubeconfig, localcluster.bins(build=False))
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    cluster.kubectl("create", "namespace", NS, check=False)
    # Each job has its rendezvous store pod besides its workers.
    nodes = math.ceil(max(args.jobs) * (WORKERS + 1) / PODS_PER_NODE) + 1
    for i in range(nodes):
        cluster.apply(node(f"scale-{i}"))
    op = Operator(cluster, Path(tempfile.mkdtemp()) / "operator.log")
    runs = []
    try:
        for n in args.jobs:
            op.start()
            runs.append(asyncio.run(run_size(n, cluster, op, args.idle_seconds, args.seed)))
            op.stop()
            print(json.dumps(runs[-1], indent=2), flush=True)
    finally:
        op.stop()
        cluster.kubectl("delete", "namespace", NS, "--wait=false", check=False)
        cluster.kubectl("delete", "nodes", "-l", "trainop.dev/bench=scale", check=False)
    results = {
        "command": "python bench/scale/bench_scale.py --jobs "
        + " ".join(map(str, args.jobs))
        + f" --idle-seconds {args.idle_seconds:g}",
        "runs": runs,
        "nodes": {"kwok": nodes, "pods_per_node": PODS_PER_NODE},
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "note": "shared 2-core VM: control plane, kwok and operator on one machine",
        },
        "operator_log": str(op.log),
    }
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

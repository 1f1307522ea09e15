"""Kubeflow's training operator v1.9.2 against trainop, side by side, in one run.

    .venv/bin/python bench/compare-kubeflow/compare.py --repeats 5  # results.json + results.md
    .venv/bin/python bench/compare-kubeflow/compare.py --quick   # smoke test: 1 rep, small sizes

One local control plane (hack/localcluster.py, kwok nodes, its audit log with reads),
both operators running at once, each watching its own namespace: Kubeflow's
training-operator.v1 (built by build.sh, at its defaults) in kf-bench, and trainop as
it is in this checkout (`python -m trainop.cli operator`) in tj-bench. Each repetition
gives both the same workload, alternating which goes first:
  1. apply a 1-, an 8- and a 64-worker job; time apply -> worker pods exist; delete it;
  2. a 4-worker lifecycle: apply -> all Running -> worker-0 exits 137 (the kwok stage
     a kubelet stands in for, the same annotation for both) -> replaced -> Running ->
     delete -> gone; times pod marked Failed -> replacement exists, and counts the
     operator's API requests (by user agent; watches excluded);
  3. the operator's CPU time over the repetition's workload (/proc/<pid>/stat).
Then each operator's peak RSS (VmHWM), and trainop alone takes a burst of 200
TrainingJobs x 8 workers from 8 concurrent clients. Every time comes from the API
server's audit log (audit.py), every ratio and goal from report.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "bench" / "operator"))
sys.path.insert(0, str(ROOT))

import audit  # noqa: E402
import bench_operator  # noqa: E402
import kubeflow_operator as kf  # noqa: E402
import report  # noqa: E402
from tests.cluster.conftest import (  # noqa: E402
    Cluster,
    Operator,
    localcluster,
    wait_established,
    wait_for,
)

from trainop.kube.client import Kube, KubeError  # noqa: E402
from trainop.kube.client import job_path as tj_job_path  # noqa: E402

KF_NS = "kf-bench"
TJ_NS = "tj-bench"
BENCH_AGENT = "trainop-compare-kubeflow/bench"
TJ_AGENTS = ("trainop-operator/", "kopf/")
FAIL_ANNOTATION = "kwok.trainop.dev/exit-code"  # hack/kwok-stages.yaml: trainop-pod-exit
FAIL_EXIT_CODE = "137"  # SIGKILL: retryable for Kubeflow's ExitCode policy and for trainop
SETTLE_S = 2.0  # after a lifecycle, for the operators' last reactions to reach the log
# Idle time before each measurement: longer than Kubeflow's client-side rate limiter
# takes to refill (burst 30 at 20 QPS), so neither operator carries the last step's work.
QUIET_S = 1.5
# Room for the burst's 1,600 pods beside hack/localcluster.py's four nodes (440 pods).
EXTRA_NODES = {f"bench-node-{i}": 500 for i in range(4)}


def tj_manifest(namespace: str, name: str, workers: int) -> dict[str, Any]:
    return bench_operator.job(name, workers, namespace)


@dataclass
class Side:
    """One operator and how the benchmark talks about its jobs."""

    name: str
    namespace: str
    job_resource: str  # objectRef.resource in the audit log
    agents: tuple[str, ...]
    manifest: Callable[[str, str, int], dict[str, Any]]
    path: Callable[[str, str | None], str]
    pid: Callable[[], int]
    alive: Callable[[], bool]
    restart: Callable[[], None]
    samples: dict[str, list[float]] = field(default_factory=dict)
    requests_by_kind: list[dict[str, int]] = field(default_factory=list)
    failed_requests: list[dict[str, int]] = field(default_factory=list)
    timelines: dict[str, list[str]] = field(default_factory=dict)

    def add(self, key: str, value: float | None) -> None:
        if value is not None:
            self.samples.setdefault(key, []).append(value)

    def checkpoint(self) -> Callable[[], None]:
        """A function that drops every sample added after this call."""
        lengths = {k: len(v) for k, v in self.samples.items()}
        counts = len(self.requests_by_kind), len(self.failed_requests)

        def rollback() -> None:
            for key, values in self.samples.items():
                del values[lengths.get(key, 0) :]
            del self.requests_by_kind[counts[0] :]
            del self.failed_requests[counts[1] :]

        return rollback


class AuditTail:
    """Follows the audit log as the API server appends to it (and rotates it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: list[audit.Entry] = []
        self.last_from: dict[str, float] = {}  # user agent -> its latest request
        self._file: Any = None
        self._inode = -1
        self._rest = ""

    def poll(self) -> None:
        if self._file is None:
            if not self.path.exists():
                return
            self._file = self.path.open()
            self._inode = os.fstat(self._file.fileno()).st_ino
        self._read()
        with contextlib.suppress(FileNotFoundError):
            if self.path.stat().st_ino != self._inode:  # rotated: finish the old file first
                self._read()
                self._file.close()
                self._file = None
                self._rest = ""
                self.poll()

    def _read(self) -> None:
        chunk = self._file.read()
        if not chunk:
            return
        lines = (self._rest + chunk).split("\n")
        self._rest = lines.pop()  # a line still being written
        for line in lines:
            entry = audit.parse_line(line)
            if entry is not None:
                self.entries.append(entry)
                self.last_from[entry.user_agent] = entry.t

    def mark(self) -> int:
        self.poll()
        return len(self.entries)

    def since(self, index: int) -> list[audit.Entry]:
        return self.entries[index:]


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def reset_peak_rss(pid: int) -> bool:
    """Writing 5 to clear_refs resets VmHWM to the current RSS (proc(5))."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


async def until(pred: Callable[[], Awaitable[bool]], limit: float, every: float) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if await pred():
            return True
        await asyncio.sleep(every)
    return False


class Bench:
    def __init__(self, kube: Kube, tail: AuditTail, timeout: float) -> None:
        self.kube = kube
        self.tail = tail
        self.timeout = timeout

    async def create(self, side: Side, name: str, workers: int) -> None:
        await self.kube.request(
            "create",
            side.path(side.namespace, None),
            resource=side.job_resource,
            body=side.manifest(side.namespace, name, workers),
        )

    async def live_workers(self, side: Side, name: str) -> list[dict[str, Any]]:
        pods = await self.kube.list_pods(side.namespace, "")
        prefix = audit.worker_prefix(name)
        return [
            p
            for p in pods
            if p["metadata"]["name"].startswith(prefix)
            and not p["metadata"].get("deletionTimestamp")
        ]

    async def all_running(self, side: Side, name: str, n: int) -> bool:
        pods = await self.live_workers(side, name)
        return len(pods) == n and all(p["status"].get("phase") == "Running" for p in pods)

    async def delete_and_wait(self, side: Side, name: str) -> None:
        try:
            await self.kube.request(
                "delete",
                side.path(side.namespace, name),
                resource=side.job_resource,
                body={"propagationPolicy": "Background"},
            )
        except KubeError as exc:
            if exc.status != 404:
                raise

        async def gone() -> bool:
            try:
                await self.kube.request(
                    "get", side.path(side.namespace, name), resource=side.job_resource
                )
            except KubeError as exc:
                if exc.status != 404:
                    raise
                prefix = f"{name}-"
                pods = await self.kube.list_pods(side.namespace, "")
                return not any(p["metadata"]["name"].startswith(prefix) for p in pods)
            return False

        if not await until(gone, self.timeout, 0.1):
            print(f"  ! {side.name}/{name}: still there after {self.timeout:.0f} s", flush=True)

    async def audit_until(self, check: Callable[[], Any], limit: float | None = None) -> Any:
        """Polls the audit log until check() returns something other than None."""
        box: list[Any] = []

        async def found() -> bool:
            self.tail.poll()
            value = check()
            if value is not None:
                box.append(value)
                return True
            return False

        await until(found, limit or self.timeout, 0.01)
        return box[0] if box else None

    async def quiet(self, side: Side) -> None:
        """Until the operator has sent nothing for QUIET_S: each measurement starts from
        an idle operator (and a refilled client-side rate limiter, for Kubeflow's)."""

        async def calm() -> bool:
            self.tail.poll()
            last = max(
                (t for agent, t in self.tail.last_from.items() if agent.startswith(side.agents)),
                default=0.0,
            )
            return time.time() - last >= QUIET_S

        if not await until(calm, self.timeout, 0.1):
            print(f"  ! {side.name}: never quiet for {QUIET_S} s", flush=True)

    async def time_to_pods(self, side: Side, name: str, workers: int) -> float | None:
        await self.quiet(side)
        i0 = self.tail.mark()
        await self.create(side, name, workers)
        took = await self.audit_until(
            lambda: audit.time_to_pods(
                self.tail.since(i0), side.job_resource, side.namespace, name, workers
            )
        )
        entries = self.tail.since(i0)
        start = audit.job_created_at(entries, side.job_resource, side.namespace, name)
        pods = audit.creates(entries, "pods", side.namespace, audit.worker_prefix(name))
        if start is not None and pods:
            first = pods[0].t
            mine = [e for e in entries if start <= e.t <= first and audit.is_from(e, side.agents)]
            side.add(f"first_of_{workers}_s", first - start)
            if mine:
                side.add(f"first_request_{workers}_s", mine[0].t - start)
            side.add(f"requests_before_first_pod_{workers}", len(mine) - 1)
        if workers == 1:
            side.timelines["first pod, 1 worker"] = self.timeline(side, i0, name)
        await self.delete_and_wait(side, name)
        return float(took) if took is not None else None

    def timeline(self, side: Side, i0: int, name: str) -> list[str]:
        """The operator's requests from the job's create to its first pod's create."""
        entries = self.tail.since(i0)
        start = audit.job_created_at(entries, side.job_resource, side.namespace, name)
        first = audit.creates(entries, "pods", side.namespace, audit.worker_prefix(name))
        if start is None or not first:
            return []
        return [
            f"+{(e.t - start) * 1000:6.1f} ms  {e.verb}{' (dry run)' if e.dry_run else ''} "
            f"{e.resource}{'/' + e.subresource if e.subresource else ''} {e.name} -> {e.code}"
            for e in entries
            if start <= e.t <= first[0].t and audit.is_from(e, side.agents)
        ]

    async def lifecycle(self, side: Side, name: str) -> None:
        """4 workers: apply -> Running -> worker-0 fails -> replaced -> Running -> delete."""
        await self.quiet(side)
        i0 = self.tail.mark()
        start = time.time()
        await self.create(side, name, 4)
        if not await until(lambda: self.all_running(side, name, 4), self.timeout, 0.05):
            print(f"  ! {side.name}/{name}: 4 workers not Running", flush=True)
        await self.quiet(side)
        pod = f"{audit.worker_prefix(name)}0"
        asked = time.time()
        await self.kube.patch_pod_annotations(
            side.namespace, pod, {FAIL_ANNOTATION: FAIL_EXIT_CODE}
        )
        marked = await self.audit_until(
            lambda: audit.marked_failed_at(self.tail.since(i0), side.namespace, pod, asked)
        )
        new = None
        if marked is not None:
            new = await self.audit_until(
                lambda: audit.replaced_at(self.tail.since(i0), side.namespace, pod, marked)
            )
        if new is not None:
            side.add("replacement_s", new - marked)
            entries = self.tail.since(i0)
            between = [e for e in entries if marked <= e.t <= new and audit.is_from(e, side.agents)]
            side.add("replacement_requests", len(between))
            if between:
                side.add("replacement_first_request_s", between[0].t - marked)
            side.timelines["replacement"] = [
                f"+{(e.t - marked) * 1000:6.1f} ms  {e.verb} {e.resource}"
                f"{'/' + e.subresource if e.subresource else ''} {e.name} -> {e.code}"
                for e in entries
                if marked <= e.t <= new and audit.is_from(e, side.agents)
            ]
        else:
            print(f"  ! {side.name}/{name}: no replacement for {pod}", flush=True)
        await until(lambda: self.all_running(side, name, 4), self.timeout, 0.05)
        await self.delete_and_wait(side, name)
        await asyncio.sleep(SETTLE_S)
        self.tail.poll()
        counts = audit.request_counts(self.tail.since(i0), side.agents, start, time.time())
        side.add("api_requests", sum(counts.values()))
        side.requests_by_kind.append(dict(counts))
        fails = audit.failed_requests(self.tail.since(i0), side.agents, start, time.time())
        side.failed_requests.append(dict(fails))

    async def repetition(self, side: Side, rep: int, sizes: list[int]) -> dict[str, Any]:
        cpu0 = cpu_seconds(side.pid())
        t0 = time.monotonic()
        out: dict[str, Any] = {"load_average_before": load()}
        for n in sizes:
            took = await self.time_to_pods(side, f"r{rep}-w{n}", n)
            key = "first_pod_s" if n == 1 else f"pods_{n}_s"
            side.add(key, took)
            out[key] = took
        await self.lifecycle(side, f"r{rep}-life")
        cpu = cpu_seconds(side.pid()) - cpu0
        side.add("cpu_s", cpu)
        out.update(
            replacement_s=(side.samples.get("replacement_s") or [None])[-1],
            api_requests=(side.samples.get("api_requests") or [None])[-1],
            cpu_s=round(cpu, 3),
            wall_s=round(time.monotonic() - t0, 1),
        )
        return out

    async def burst(
        self, side: Side, jobs: int, workers: int, clients: int, log: Path
    ) -> dict[str, Any]:
        """`jobs` jobs created by `clients` concurrent clients; until all their pods exist."""
        await self.quiet(side)
        pid = side.pid()
        reset = reset_peak_rss(pid)
        log_offset = file_size(log)
        cpu0 = cpu_seconds(pid)
        i0 = self.tail.mark()
        start = time.time()
        names = [f"burst-{i:03d}" for i in range(jobs)]  # prepare() emptied the namespace
        todo = list(reversed(names))
        create_errors: list[str] = []

        async def client() -> None:
            while todo:
                name = todo.pop()
                try:
                    await self.create(side, name, workers)
                except KubeError as exc:
                    create_errors.append(f"{name}: {exc}")

        await asyncio.gather(*(client() for _ in range(clients)))
        created_in = time.time() - start
        want = jobs * workers

        def pods_seen() -> int:
            return len(
                {
                    e.name
                    for e in audit.creates(self.tail.since(i0), "pods", side.namespace, "burst-")
                    if "-worker-" in e.name
                }
            )

        async def complete() -> bool:
            self.tail.poll()
            return pods_seen() >= want

        await until(complete, max(self.timeout, 300), 0.2)
        load_after = load()
        entries = self.tail.since(i0)
        first = min(
            (e.t for e in entries if e.stored_create and e.resource == side.job_resource),
            default=None,
        )
        per_job = [
            audit.time_to_pods(entries, side.job_resource, side.namespace, n, workers)
            for n in names
        ]
        done = [t for t in per_job if t is not None]
        last_pod = max(
            (e.t for e in audit.creates(entries, "pods", side.namespace, "burst-")),
            default=None,
        )
        all_pods_s = (
            last_pod - first
            if first is not None and last_pod is not None and len(done) == jobs
            else None
        )
        log_text = read_from(log, log_offset)
        log_errors = [
            line for line in log_text.splitlines() if " ERROR " in line or "Traceback" in line
        ]
        failed = audit.failed_requests(entries, side.agents, start, time.time())
        # 404 (a get that finds nothing) and 409 (a conflict retried) are answers, not failures.
        real_failures = {k: v for k, v in failed.items() if k.split()[0] not in ("404", "409")}
        errors = len(create_errors) + len(log_errors) + sum(real_failures.values())
        errors += jobs - len(done)
        return {
            "jobs": jobs,
            "workers": workers,
            "clients": clients,
            "creates_sent_in_s": round(created_in, 3),
            "pods_created": pods_seen(),
            "all_pods_s": round(all_pods_s, 3) if all_pods_s is not None else None,
            "jobs_per_s": round(jobs / all_pods_s, 2) if all_pods_s else None,
            "per_job_s": report_summary(done),
            "peak_rss_mb": round(peak_rss_mb(pid), 1),
            "peak_rss_reset_before": reset,
            "cpu_s": round(cpu_seconds(pid) - cpu0, 2),
            "errors": errors,
            "create_errors": create_errors[:10],
            "operator_log_errors": log_errors[:10],
            "operator_failed_requests": dict(failed),
            "operator_requests": dict(
                audit.request_counts(entries, side.agents, start, time.time())
            ),
            "load_average_after": load_after,
        }


def keep_audit_log(work: Path) -> None:
    """The run's audit log, compressed, beside the operators' logs: the cluster's copy
    goes with the cluster."""
    for src in sorted(localcluster.audit_log().parent.glob("audit*.log")):
        with src.open("rb") as f, gzip.open(work / f"{src.name}.gz", "wb") as out:
            shutil.copyfileobj(f, out)


def file_size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def read_from(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


def report_summary(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)
    return {
        "n": len(values),
        "p50_s": round(statistics.median(values), 4),
        "p90_s": round(ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))], 4),
        "max_s": round(ordered[-1], 4),
    }


def add_nodes(cluster: Cluster) -> None:
    for name, pods in EXTRA_NODES.items():
        node = localcluster.gpu_node(name, 0)
        node["status"]["capacity"]["pods"] = str(pods)  # type: ignore[index]
        node["status"]["allocatable"]["pods"] = str(pods)  # type: ignore[index]
        cluster.apply(node)


def prepare(cluster: Cluster) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    wait_established(cluster, "trainingjobs.trainop.dev")
    add_nodes(cluster)
    for ns in (KF_NS, TJ_NS):
        cluster.kubectl("create", "namespace", ns, check=False)
        wait_for(
            f"{ns}'s default ServiceAccount", lambda ns=ns: cluster.get_or_none("sa", "default", ns)
        )

    def ready() -> bool:
        out = cluster.kubectl(
            "get",
            "nodes",
            "-o",
            "jsonpath={.items[*].status.conditions[?(@.type=='Ready')].status}",
        )
        states = out.split()
        return len(states) == len(localcluster.GPU_NODES) + len(EXTRA_NODES) and all(
            s == "True" for s in states
        )

    wait_for("every node Ready", ready, timeout=60)
    # A kept cluster may hold an earlier run's jobs: start from empty namespaces.
    for ns, kind in ((KF_NS, "pytorchjobs.kubeflow.org"), (TJ_NS, "trainingjobs.trainop.dev")):
        cluster.kubectl("delete", kind, "--all", "-n", ns, "--wait=false", check=False)
    wait_for(
        "the namespaces empty",
        lambda: not any(cluster.list("pods", ns) for ns in (KF_NS, TJ_NS)),
        timeout=180,
    )


async def run(
    args: argparse.Namespace, cluster: Cluster, sides: list[Side], tj_log: Path
) -> dict[str, Any]:
    kube = await Kube.connect(str(cluster.kubeconfig), user_agent=BENCH_AGENT)
    tail = AuditTail(localcluster.audit_log())
    bench = Bench(kube, tail, timeout=args.timeout)
    sizes = [1, 8] if args.quick else [1, 8, 64]
    reps: list[dict[str, Any]] = []
    try:
        for side in sides:  # first reconciles (imports, informers) are nobody's figure
            await bench.time_to_pods(side, "warmup", 1)
            side.timelines.clear()
        warnings: list[str] = []
        if "watch cache not primed" in read_from(tj_log, 0):
            warnings.append("trainop started without its watch cache (see its log)")
            print(f"  ! {warnings[-1]}", flush=True)
        for rep in range(args.repeats):
            order = sides if rep % 2 == 0 else list(reversed(sides))
            row: dict[str, Any] = {"repetition": rep, "order": [s.name for s in order]}
            for side in order:
                row[side.name] = await repetition(bench, side, rep, sizes, warnings)
                print(f"rep {rep} {side.name}: {json.dumps(row[side.name])}", flush=True)
            reps.append(row)
        load_after = load()
        peaks = {s.name: round(peak_rss_mb(s.pid()), 1) for s in sides}
        for side in sides:
            side.samples["peak_rss_mb"] = [peaks[side.name]]
        burst = None
        if args.burst_jobs:
            tj = next(s for s in sides if s.name == "trainop")
            if not tj.alive():
                warnings.append("trainop had exited before the burst: restarted")
                tj.restart()
            burst = await bench.burst(tj, args.burst_jobs, 8, 8, tj_log)
            print(f"burst: {json.dumps(burst)}", flush=True)
    finally:
        await kube.close()
    return {
        "repetitions": reps,
        "burst": burst,
        "load_after_repetitions": load_after,
        "warnings": warnings,
    }


async def repetition(
    bench: Bench, side: Side, rep: int, sizes: list[int], warnings: list[str]
) -> dict[str, Any]:
    """One repetition of one operator's workload. On a shared machine an operator can be
    killed from outside (a stale pid file of another cluster, say): a repetition it did
    not live through is dropped and run again on a restarted operator, and said so."""
    for _ in range(3):
        if not side.alive():
            warnings.append(f"{side.name} had exited before repetition {rep}: restarted")
            print(f"  ! {warnings[-1]}", flush=True)
            side.restart()
            await bench.time_to_pods(side, f"r{rep}-warmup", 1)
        rollback = side.checkpoint()
        out = await bench.repetition(side, rep, sizes)
        if side.alive():
            return out
        rollback()
        warnings.append(f"{side.name} exited during repetition {rep}: its samples dropped")
        print(f"  ! {warnings[-1]}", flush=True)
    raise RuntimeError(f"{side.name} keeps exiting")


def render(results: dict[str, Any], rows: list[report.Row], sides: list[Side]) -> str:
    kf_side, tj_side = sides
    la = results["load_average"]
    lines = [
        "# trainop against Kubeflow's training operator v1.9.2",
        "",
        "Every number below comes from one run of:",
        "",
        "```bash",
        results["command"],
        "```",
        "",
        f"Run {results['started']} on {results['machine']['cpus']} CPUs "
        f"({results['machine']['note']}); trainop at commit {results['trainop_commit']}.",
        f"Load average (1/5/15 min) at start {la['start']}, after the repetitions "
        f"{la['after_repetitions']}, at the end {la['end']}; per repetition in results.json.",
        "",
        "Medians over the repetitions, (min-max) when they differ. Ratio = trainop / Kubeflow.",
        "",
        *(f"**Warning: {w}.**" for w in results.get("warnings", [])),
        "",
        report.markdown_table(rows),
        "",
        "## Per repetition",
        "",
        "| rep | first | operator | 1 worker | 8 pods | 64 pods | replacement | requests | CPU s"
        " | load (1/5/15) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for rep in results["repetitions"]:
        for name in ("kubeflow", "trainop"):
            r = rep[name]
            ms = {k: report.fmt(r.get(k), "s") for k in ("first_pod_s", "pods_8_s", "pods_64_s")}
            lines.append(
                f"| {rep['repetition']} | {rep['order'][0]} | {name} | {ms['first_pod_s']} "
                f"| {ms['pods_8_s']} | {ms['pods_64_s']} "
                f"| {report.fmt(r.get('replacement_s'), 's')} | {r.get('api_requests')} "
                f"| {r.get('cpu_s')} | {r['load_average_before']} |"
            )
    lines += [
        "",
        "## API requests, one 4-worker lifecycle (the last repetition)",
        "",
        "Completed requests with the operator's user agent, from the job's create to 2 s after",
        "it and its pods are gone. Watches are not counted (they outlive a lifecycle).",
        "",
        report.by_kind_table(
            (kf_side.requests_by_kind or [{}])[-1], (tj_side.requests_by_kind or [{}])[-1]
        ),
    ]
    for title, key in (
        ("apply -> first pod (1 worker, last repetition)", "first pod, 1 worker"),
        ("pod marked Failed -> replacement (last repetition)", "replacement"),
    ):
        lines += ["", f"## Each operator's requests, {title}", ""]
        for side in sides:
            lines += [
                f"{side.name}:",
                "",
                "```",
                *(side.timelines.get(key) or ["(none)"]),
                "```",
                "",
            ]
    burst = results.get("burst")
    lines += why_missed(rows, kf_side, tj_side, burst)
    if burst:
        lines += ["## Burst (trainop)", "", "```json", json.dumps(burst, indent=2), "```", ""]
    lines += [
        "## How it is measured",
        "",
        "See bench/compare-kubeflow/README.md. Times: audit-log stageTimestamps (the job's",
        "create stored -> the pod's create stored). CPU: utime+stime over one repetition's",
        "workload (1-, 8-, 64-worker jobs and the lifecycle). Peak RSS: VmHWM after the",
        "repetitions.",
        "",
    ]
    return "\n".join(lines)


def why_missed(
    rows: list[report.Row], kf_side: Side, tj_side: Side, burst: dict[str, Any] | None
) -> list[str]:
    """A line per missed row, from this run's samples (medians)."""

    def med(side: Side, key: str, unit: str = "s") -> str:
        return report.fmt(report.median(side.samples.get(key, [])), unit)

    def chain(n: int) -> str:
        return (
            f"first operator request {med(tj_side, f'first_request_{n}_s')} after the job is "
            f"stored (Kubeflow: {med(kf_side, f'first_request_{n}_s')}), "
            f"{med(tj_side, f'requests_before_first_pod_{n}', 'n')} requests before the first "
            f"pod (Kubeflow: {med(kf_side, f'requests_before_first_pod_{n}', 'n')}), first pod "
            f"{med(tj_side, f'first_of_{n}_s')} (Kubeflow: {med(kf_side, f'first_of_{n}_s')})"
        )

    def by_kind(side: Side) -> Counter[str]:
        """The last lifecycle's requests, both job kinds called <job>."""
        out: Counter[str] = Counter()
        for k, n in (side.requests_by_kind or [{}])[-1].items():
            out[k.replace(side.job_resource, "<job>")] += n
        return out

    kf_kinds, tj_kinds = by_kind(kf_side), by_kind(tj_side)
    extra = sorted(
        ((k, n - kf_kinds.get(k, 0)) for k, n in tj_kinds.items() if n > kf_kinds.get(k, 0)),
        key=lambda kv: -kv[1],
    )
    reasons = {
        report.RATIO_GOALS[0][1]: chain(1) + "; the sequence is listed below.",
        report.RATIO_GOALS[1][1]: chain(8) + ".",
        report.RATIO_GOALS[2][1]: chain(64)
        + "; the rest is the API server's pod-create rate on the shared machine. Kubeflow's"
        " time is its client rate limiter's (QPS 20, burst 30: pods, Services and Events).",
        report.RATIO_GOALS[3][1]: f"trainop sends {med(tj_side, 'replacement_requests', 'n')}"
        f" requests from the mark to the replacement, the first after "
        f"{med(tj_side, 'replacement_first_request_s')} (Kubeflow: "
        f"{med(kf_side, 'replacement_requests', 'n')}, first after "
        f"{med(kf_side, 'replacement_first_request_s')}); listed below.",
        report.RATIO_GOALS[4][1]: "more than Kubeflow in the last lifecycle: "
        + ", ".join(f"{k} +{n}" for k, n in extra)
        + "; Kubeflow's extra are Events and per-worker Services (table above).",
        report.RATIO_GOALS[5][1]: "see README, 'Where trainop's time goes'"
        " (bench/compare-kubeflow/profile_trainop.py).",
        report.RATIO_GOALS[6][1]: "a Python process with Kopf, kubernetes_asyncio, aiohttp and"
        " pydantic loaded; see README.",
    }
    if burst:
        busy = burst["cpu_s"] / burst["all_pods_s"] if burst.get("all_pods_s") else None
        reasons["burst"] = (
            f"the {burst['clients']} clients' {burst['jobs']} creates took"
            f" {burst['creates_sent_in_s']} s to be accepted"
            f" (the API server, etcd, scheduler, kwok and both operators share the machine);"
            f" trainop used {burst['cpu_s']} s of CPU"
            + (f" ({busy:.2f} cores on average)" if busy else "")
            + f" for {sum(burst['operator_requests'].values())} requests."
        )
    lines = ["", "## Why the missed rows miss (this run's medians)", ""]
    for row in rows:
        if row.met is False:
            key = "burst" if row.measure.startswith("burst") else row.measure
            lines.append(f"- **{row.measure}**: {reasons.get(key, 'see README')}")
    return [*lines, ""]


def git_commit() -> str:
    import subprocess  # noqa: PLC0415

    res = subprocess.run(
        ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    )
    return res.stdout.strip() or "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--quick", action="store_true", help="1 repetition, 1 and 8 workers, a 20-job burst"
    )
    parser.add_argument("--burst-jobs", type=int, default=200, help="0: no burst")
    parser.add_argument("--timeout", type=float, default=120, help="seconds for any one condition")
    parser.add_argument("--out", default=str(HERE / "results.json"))
    parser.add_argument(
        "--keep-cluster", action="store_true", help="leave the control plane running"
    )
    args = parser.parse_args()
    if args.quick:
        args.repeats = 1
        args.burst_jobs = min(args.burst_jobs, 20)
    given_dir = os.environ.get("TRAINOP_CLUSTER_DIR")
    # A cluster of its own: its audit policy logs reads, and it is stopped at the end.
    os.environ.setdefault(
        "TRAINOP_CLUSTER_DIR", str(localcluster.cache_dir() / "cluster-compare-kubeflow")
    )
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    load_start = load()
    kf_bin, kf_src = kf.build()
    kubeconfig = localcluster.up(audit_reads=True)
    cluster = Cluster(kubeconfig, localcluster.bins(build=False))
    work = Path(tempfile.mkdtemp(prefix="compare-kubeflow-"))
    kf_op = kf.KubeflowOperator(cluster, kf_bin, work / "certs", work / "kubeflow.log")
    tj_op = Operator(cluster, work / "trainop.log")
    print(f"logs in {work}", flush=True)
    try:
        prepare(cluster)
        kf.make_certs(work / "certs")
        kf.install(cluster, kf_src, work / "certs", kf_op.webhook_port)
        kf_op.start(KF_NS)
        tj_op.start(args=["--namespace", TJ_NS])
        sides = [
            Side(
                "kubeflow",
                KF_NS,
                "pytorchjobs",
                kf.AGENTS,
                kf.pytorchjob,
                kf.job_path,
                lambda: kf_op.pid,
                kf_op.alive,
                lambda: kf_op.start(KF_NS),
            ),
            Side(
                "trainop",
                TJ_NS,
                "trainingjobs",
                TJ_AGENTS,
                tj_manifest,
                tj_job_path,
                lambda: tj_op.pid,
                tj_op.alive,
                lambda: tj_op.start(args=["--namespace", TJ_NS]),
            ),
        ]
        out = asyncio.run(run(args, cluster, sides, work / "trainop.log"))
    finally:
        kf_op.stop()
        tj_op.stop()
        keep_audit_log(work)
        if not args.keep_cluster:
            localcluster.down()
    kf_side, tj_side = sides
    rows = report.build_rows(kf_side.samples, tj_side.samples, out["burst"])
    flags = " --quick" if args.quick else f" --repeats {args.repeats}"
    if args.burst_jobs != (20 if args.quick else 200):
        flags += f" --burst-jobs {args.burst_jobs}"
    results: dict[str, Any] = {
        "command": (f"TRAINOP_CLUSTER_DIR={given_dir} " if given_dir else "")
        + f".venv/bin/python bench/compare-kubeflow/compare.py{flags}",
        "started": started,
        "trainop_commit": git_commit(),
        "kubeflow_version": kf.VERSION,
        "load_average": {
            "start": load_start,
            "after_repetitions": out.pop("load_after_repetitions"),
            "end": load(),
        },
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "note": "shared 2-core VM; kwok nodes; control plane on 127.0.0.1",
        },
        "rows": report.rows_as_dicts(rows),
        "samples": {s.name: s.samples for s in sides},
        "requests_by_kind": {s.name: s.requests_by_kind for s in sides},
        "failed_requests": {s.name: s.failed_requests for s in sides},
        "timelines": {s.name: s.timelines for s in sides},
        **out,
    }
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    md = Path(args.out).with_suffix(".md")
    md.write_text(render(results, rows, sides))
    print(report.markdown_table(rows))
    print(f"wrote {args.out} and {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

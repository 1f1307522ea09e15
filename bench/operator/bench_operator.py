"""Operator latency and API cost on the real local control plane.

    .venv/bin/python bench/operator/bench_operator.py [--repeats N] [--out FILE]

Measures, with the real operator process (`trainop operator`) and kwok nodes:
  1. create -> every worker pod exists, for 1-, 8- and 64-worker jobs;
  2. worker failure observed -> replacement pod created;
  3. Kubernetes API requests per job lifecycle, by verb and resource (from the
     operator's own trainop_operator_api_requests_total counters).
Times are wall-clock on a shared 2-core machine: read the spread, not just p50.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.cluster.conftest import Cluster, Operator, localcluster  # noqa: E402

from trainop.kube.client import Kube, job_path  # noqa: E402

NS = "bench"
SEL = "trainop.dev/job-name={},trainop.dev/role=worker"


def job(name: str, workers: int, namespace: str = NS) -> dict[str, Any]:
    """Elastic 1..workers, restarted on any failure at once (bench/compare-kubeflow too)."""
    return {
        "apiVersion": "trainop.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "image": "trainer:1",
            "entrypoint": {"module": "m"},
            "replicas": workers,
            "minReplicas": 1,
            "maxReplicas": max(workers, 1),
            "failurePolicy": {"backoffLimit": 1000, "backoffSeconds": 0},
        },
    }


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50_s": round(statistics.median(values), 4),
        "p90_s": round(pct(values, 0.9), 4),
        "min_s": round(min(values), 4),
        "max_s": round(max(values), 4),
    }


async def live_workers(kube: Kube, name: str) -> list[dict[str, Any]]:
    pods = await kube.list_pods(NS, SEL.format(name))
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


async def wait(pred: Any, limit: float = 120, every: float = 0.01) -> float:
    deadline = time.perf_counter() + limit
    while time.perf_counter() < deadline:
        if await pred():
            return time.perf_counter()
        await asyncio.sleep(every)
    raise TimeoutError("benchmark condition not reached")


async def delete_job(kube: Kube, name: str) -> None:
    await kube.request(
        "delete",
        job_path(NS, name),
        resource="trainingjobs",
        body={"propagationPolicy": "Foreground"},
    )

    async def gone() -> bool:
        return await kube.get_job(NS, name) is None and not await kube.list_pods(
            NS, f"trainop.dev/job-name={name}"
        )

    await wait(gone, every=0.1)


async def bench_create(kube: Kube, sizes: list[int], repeats: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for n in sizes:
        times = []
        for i in range(repeats):
            name = f"create-{n}-{i}"
            t0 = time.perf_counter()
            await kube.request("create", job_path(NS), resource="trainingjobs", body=job(name, n))

            async def all_created(name: str = name, n: int = n) -> bool:
                return len(await live_workers(kube, name)) == n

            times.append(await wait(all_created) - t0)
            await delete_job(kube, name)
        out[f"{n}_workers"] = summary(times)
    return out


async def bench_replace(kube: Kube, repeats: int) -> dict[str, Any]:
    name = "replace"
    await kube.request("create", job_path(NS), resource="trainingjobs", body=job(name, 4))

    async def running() -> bool:
        pods = await live_workers(kube, name)
        return len(pods) == 4 and all(p["status"].get("phase") == "Running" for p in pods)

    observed_to_created, injected_to_created = [], []
    for _ in range(repeats):
        await wait(running)
        old = next(
            p for p in await live_workers(kube, name) if p["metadata"]["name"] == f"{name}-worker-0"
        )
        uid = old["metadata"]["uid"]
        t0 = time.perf_counter()
        await kube.patch_pod_annotations(
            NS, old["metadata"]["name"], {"kwok.trainop.dev/exit-code": "1"}
        )
        failed_at: list[float] = []

        async def replaced(uid: str = uid, failed_at: list[float] = failed_at) -> bool:
            pods = await kube.list_pods(NS, SEL.format(name))
            w0 = [p for p in pods if p["metadata"]["name"] == f"{name}-worker-0"]
            if not failed_at and (
                not w0
                or w0[0]["status"].get("phase") == "Failed"
                or w0[0]["metadata"]["uid"] != uid
            ):
                failed_at.append(time.perf_counter())
            return bool(w0) and w0[0]["metadata"]["uid"] != uid

        t_new = await wait(replaced, every=0.005)
        observed_to_created.append(t_new - failed_at[0])
        injected_to_created.append(t_new - t0)
    await delete_job(kube, name)
    return {
        "failure_observed_to_replacement_created": summary(observed_to_created),
        "failure_injected_to_replacement_created": summary(injected_to_created),
    }


def counters(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        m = re.match(
            r'trainop_operator_api_requests_total\{resource="([^"]+)",verb="([^"]+)"\} '
            r"([0-9.e+]+)",
            line,
        )
        if m:
            out[f"{m.group(2)} {m.group(1)}"] = float(m.group(3))
    return out


async def bench_requests(kube: Kube, op: Operator) -> dict[str, Any]:
    name = "lifecycle"
    before = counters(op.metrics())
    await kube.request("create", job_path(NS), resource="trainingjobs", body=job(name, 4))

    async def running() -> bool:
        st = (await kube.get_job(NS, name) or {}).get("status") or {}
        return st.get("phase") == "Running" and st.get("readyReplicas") == 4

    await wait(running, every=0.1)
    await kube.patch_pod_annotations(NS, f"{name}-worker-0", {"kwok.trainop.dev/exit-code": "1"})

    async def healed() -> bool:
        st = (await kube.get_job(NS, name) or {}).get("status") or {}
        return st.get("restarts") == 1 and st.get("readyReplicas") == 4

    await wait(healed, every=0.1)
    await delete_job(kube, name)
    await asyncio.sleep(2)  # let the last watch events drain through the queue
    after = counters(op.metrics())
    delta = {k: int(after.get(k, 0) - before.get(k, 0)) for k in sorted(after)}
    delta = {k: v for k, v in delta.items() if v}
    return {
        "lifecycle": "create 4 workers -> Running -> 1 worker fails -> replaced -> delete",
        "requests_by_verb_resource": delta,
        "total": sum(delta.values()),
    }


async def main_async(args: argparse.Namespace, cluster: Cluster, op: Operator) -> dict[str, Any]:
    kube = await Kube.connect(str(cluster.kubeconfig))
    try:
        requests = await bench_requests(kube, op)
        create = await bench_create(kube, [1, 8, 64], args.repeats)
        replace = await bench_replace(kube, args.repeats * 2)
    finally:
        await kube.close()
    return {
        "create_to_all_pods_created": create,
        "pod_replacement": replace,
        "api_requests": requests,
    }


def ratios(off: dict[str, Any], on: dict[str, Any]) -> dict[str, float]:
    """cache on / cache off for each figure both runs have (p50 for latencies)."""
    out = {"api_requests_total": on["api_requests"]["total"] / off["api_requests"]["total"]}
    for size, fig in on["create_to_all_pods_created"].items():
        before = off["create_to_all_pods_created"][size]["p50_s"]
        out[f"create_{size}_p50"] = fig["p50_s"] / before
    for name in ("failure_observed_to_replacement_created",):
        out[f"{name}_p50"] = (
            on["pod_replacement"][name]["p50_s"] / off["pod_replacement"][name]["p50_s"]
        )
    return {k: round(v, 2) for k, v in out.items()}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "bench" / "operator" / "results.json"))
    parser.add_argument(
        "--compare-cache",
        action="store_true",
        help="run everything twice in one run, the operator's watch cache off then on",
    )
    args = parser.parse_args()
    kubeconfig = localcluster.up()
    cluster = Cluster(kubeconfig, localcluster.bins(build=False))
    cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
    cluster.kubectl("create", "namespace", NS, check=False)
    op = Operator(cluster, Path(tempfile.mkdtemp()) / "operator.log")
    modes = ["false", "true"] if args.compare_cache else ["true"]
    runs: dict[str, Any] = {}
    try:
        for cache in modes:
            op.start(TRAINOP_WATCH_CACHE=cache)
            load = os.getloadavg()
            runs[cache] = asyncio.run(main_async(args, cluster, op))
            runs[cache]["load_average_1_5_15"] = [round(x, 2) for x in load]
            op.stop()
    finally:
        op.stop()
        cluster.kubectl("delete", "namespace", NS, "--wait=false", check=False)
    if args.compare_cache:
        results: dict[str, Any] = {
            "watch_cache_off": runs["false"],
            "watch_cache_on": runs["true"],
            "ratio_on_to_off": ratios(runs["false"], runs["true"]),
        }
    else:
        results = runs["true"]
    results["machine"] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "note": "shared 2-core VM; kwok nodes; control plane on 127.0.0.1",
    }
    flags = " --compare-cache" if args.compare_cache else ""
    results["command"] = f"python bench/operator/bench_operator.py --repeats {args.repeats}{flags}"
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

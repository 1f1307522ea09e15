"""Where trainop's operator spends its CPU on the comparison's workload: py-spy samples.

    .venv/bin/python -m pip install --target /tmp/pyspy py-spy   # a tool, not a dependency
    PY_SPY=/tmp/pyspy/bin/py-spy .venv/bin/python bench/compare-kubeflow/profile_trainop.py
    PY_SPY=... .venv/bin/python bench/compare-kubeflow/profile_trainop.py --burst 60

Starts the same control plane and trainop operator as compare.py (Kubeflow's is not
needed), runs one repetition of compare.py's workload (1-, 8-, 64-worker jobs and the
4-worker lifecycle) or a burst of N jobs x 8 workers under `py-spy record`, and prints
the share of the operator's busy samples (idle threads left out) by module and by
function, inclusive.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import compare as c

# Frames every busy stack passes through: they say nothing about where the time goes.
ROOTS = ("runpy", "asyncio/runners", "asyncio/base_events", "asyncio/events", "trainop/cli.py")
FRAME = re.compile(r"^(.*?) \((.*?):\d+\)$")


def _frame(text: str) -> tuple[str, str]:
    m = FRAME.match(text)
    if not m:
        return text, ""
    path = m.group(2)
    for cut in ("site-packages/", "wt-kf/operator/", "operator/", "lib/python3.11/"):
        path = path.split(cut)[-1]
    return m.group(1), path


def summarize(lines: Iterable[str]) -> tuple[int, Counter[str], Counter[str]]:
    """py-spy's raw (collapsed) stacks -> busy samples, self samples by top-level
    module, inclusive samples by function. Purely computational. A stack whose leaf
    waits (a thread pool's idle worker, a selector) is idle, not busy."""
    busy = 0
    modules: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for line in lines:
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [_frame(f) for f in stack.split(";")]
        leaf_fn, leaf_file = frames[-1]
        if leaf_fn == "_worker" or ("select" in leaf_fn.lower() and "selectors" in leaf_file):
            continue
        n = int(count)
        busy += n
        modules[leaf_file.split("/")[0] or leaf_fn] += n
        for key in {f"{fn} ({file})" for fn, file in frames}:
            inclusive[key] += n
    return busy, modules, inclusive


def render(busy: int, modules: Counter[str], inclusive: Counter[str], floor: float) -> str:
    lines = [f"busy samples: {busy}", "", "self, by module of the innermost frame:"]
    lines += [f"  {100 * n / busy:5.1f}%  {m}" for m, n in modules.most_common(12)]
    lines += ["", f"inclusive, functions with >= {floor}% of busy samples:"]
    lines += [
        f"  {100 * n / busy:5.1f}%  {k}"
        for k, n in inclusive.most_common()
        if 100 * n / busy >= floor and not any(root in k for root in ROOTS)
    ]
    return "\n".join(lines)


async def workload(args: argparse.Namespace, cluster: c.Cluster, op: c.Operator) -> None:
    side = c.Side(
        "trainop", c.TJ_NS, "trainingjobs", c.TJ_AGENTS, c.tj_manifest, c.tj_job_path,
        lambda: op.pid, op.alive, lambda: None,
    )  # fmt: skip
    kube = await c.Kube.connect(str(cluster.kubeconfig), user_agent=c.BENCH_AGENT)
    bench = c.Bench(kube, c.AuditTail(c.localcluster.audit_log()), timeout=args.timeout)
    try:
        await bench.time_to_pods(side, "warmup", 1)
        spy = await asyncio.create_subprocess_exec(
            *(args.py_spy, "record", "-p", str(op.pid), "-r", "250", "--format", "raw"),
            *("-o", str(args.raw)),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        await asyncio.sleep(1)  # py-spy attached
        cpu0 = c.cpu_seconds(op.pid)
        if args.burst:
            out = await bench.burst(side, args.burst, 8, 8, op.log)
            keep = ("jobs", "all_pods_s", "jobs_per_s", "peak_rss_mb", "errors")
            print(json.dumps({k: out[k] for k in keep}))
        else:
            print(json.dumps(await bench.repetition(side, 0, [1, 8, 64])))
        print(f"operator CPU: {c.cpu_seconds(op.pid) - cpu0:.2f} s; load {c.load()}")
        spy.send_signal(signal.SIGINT)
        await asyncio.wait_for(spy.wait(), 60)
    finally:
        await kube.close()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--burst", type=int, default=0, help="N jobs x 8 workers instead")
    parser.add_argument("--py-spy", default=os.environ.get("PY_SPY", "py-spy"))
    parser.add_argument("--timeout", type=float, default=120)
    parser.add_argument("--floor", type=float, default=2.0, help="smallest share shown, %%")
    parser.add_argument("--keep-cluster", action="store_true", help="leave the cluster running")
    args = parser.parse_args()
    os.environ.setdefault(
        "TRAINOP_CLUSTER_DIR", str(c.localcluster.cache_dir() / "cluster-compare-kubeflow")
    )
    work = Path(tempfile.mkdtemp(prefix="profile-trainop-"))
    args.raw = work / "py-spy.raw"
    kubeconfig = c.localcluster.up(audit_reads=True)
    cluster = c.Cluster(kubeconfig, c.localcluster.bins(build=False))
    c.prepare(cluster)
    op = c.Operator(cluster, work / "trainop.log")
    op.start(args=["--namespace", c.TJ_NS])
    try:
        asyncio.run(workload(args, cluster, op))
    finally:
        op.stop()
        if not args.keep_cluster:
            c.localcluster.down()
    with args.raw.open() as raw:
        print(render(*summarize(raw), floor=args.floor))
    print(f"raw stacks and the operator's log in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

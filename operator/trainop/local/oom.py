"""Telling the kernel's OOM kill from any other SIGKILL, as a kubelet does.

A kubelet reports OOMKilled when the container's memory cgroup recorded an OOM
kill. Locally every pod runs in the runner's cgroup, so a pod that died of SIGKILL
(137) while that cgroup's oom_kill count rose is taken as OOMKilled. Without a
readable count (no memory controller, macOS) every 137 stays "Error".
"""

from __future__ import annotations

from pathlib import Path

SIGKILL_EXIT = 137

_CGROUP_ROOT = Path("/sys/fs/cgroup")


def parse_oom_kills(text: str) -> int | None:
    """The `oom_kill N` line of cgroup v2 memory.events or v1 memory.oom_control. Pure."""
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill" and value.strip().isdigit():
            return int(value)
    return None


def _candidates(proc_cgroup: str) -> list[Path]:
    paths = []
    for line in proc_cgroup.splitlines():
        _, controllers, path = line.split(":", 2)
        rel = path.lstrip("/")
        if controllers == "":  # v2
            paths += [_CGROUP_ROOT / rel / "memory.events", _CGROUP_ROOT / "memory.events"]
        elif "memory" in controllers.split(","):  # v1; in a cgroup namespace the mount is our own
            paths += [
                _CGROUP_ROOT / "memory" / rel / "memory.oom_control",
                _CGROUP_ROOT / "memory" / "memory.oom_control",
            ]
    return paths


def oom_kill_count() -> int | None:
    """OOM kills so far in this process's memory cgroup (and below); None if unreadable."""
    try:
        proc_cgroup = Path("/proc/self/cgroup").read_text()
    except OSError:
        return None
    for path in _candidates(proc_cgroup):
        try:
            count = parse_oom_kills(path.read_text())
        except OSError:
            continue
        if count is not None:
            return count
    return None


def termination_reason(exit_code: int, oom_before: int | None, oom_after: int | None) -> str:
    """The kubelet-style reason of a pod's exit. Purely computational."""
    if exit_code == 0:
        return "Completed"
    oom = oom_before is not None and oom_after is not None and oom_after > oom_before
    return "OOMKilled" if exit_code == SIGKILL_EXIT and oom else "Error"

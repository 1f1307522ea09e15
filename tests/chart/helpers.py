"""The real helm and promtool, and what the chart renders: shared by the chart tests.

helm is the one hack/build-tools.sh builds from Go modules (version in
hack/versions.env), found the way hack/localcluster.py finds it; promtool comes
from Debian's prometheus package (hack/setup.sh). A missing tool FAILS the test
with the command that provides it: these checks must never be skipped silently.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.conftest import localcluster

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "trainop"
DASHBOARDS = CHART / "dashboards"
MONITORING_API = "monitoring.coreos.com/v1"
# Every monitoring object on, as a cluster running the Prometheus Operator would allow.
MONITORING_ON = (
    "--api-versions",
    MONITORING_API,
    "--set",
    "monitoring.serviceMonitor.enabled=true,monitoring.podMonitor.enabled=true,"
    "monitoring.prometheusRule.enabled=true",
)
NAMESPACED = ("--set", "watchNamespaces={team-a,team-b}")
RECORDING = ("--set", "monitoring.prometheusRule.recordingRules=true")

Obj = dict[str, Any]


def helm_path() -> Path:
    version = localcluster.versions()["HELM_VERSION"]
    return localcluster.cache_dir() / "bin" / f"helm-{version}" / "helm"


def helm_bin() -> Path:
    path = helm_path()
    if not path.exists():
        pytest.fail(
            f"helm is not built at {path}: run `bash hack/build-tools.sh helm` (make setup)"
        )
    return path


def tool(name: str, hint: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not on PATH: {hint}")
    return found


def promtool() -> str:
    return tool("promtool", "apt-get install prometheus (make setup)")


def run(argv: Iterable[str | Path], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, check=False, timeout=120, **kw
    )


def helm(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run([helm_bin(), *args], env=env)


@dataclass(frozen=True)
class Rendered:
    objects: list[Obj]

    def of_kind(self, kind: str) -> list[Obj]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, name_suffix: str = "") -> Obj:
        found = [o for o in self.of_kind(kind) if o["metadata"]["name"].endswith(name_suffix)]
        assert len(found) == 1, f"{len(found)} {kind} objects named *{name_suffix}"
        return found[0]

    @property
    def kinds(self) -> list[str]:
        return sorted(o["kind"] for o in self.objects)


@cache
def _template(args: tuple[str, ...]) -> str:
    result = helm("template", "trainop", str(CHART), "--namespace", "trainop-system", *args)
    if result.returncode != 0:
        raise AssertionError(f"helm template {' '.join(args)} failed:\n{result.stderr}")
    return result.stdout


def template(*args: str) -> Rendered:
    """`helm template` with the real helm; cached, since several tests read one rendering."""
    docs = yaml.safe_load_all(_template(tuple(args)))
    return Rendered([d for d in docs if d])


def template_error(*args: str) -> str:
    result = helm("template", "trainop", str(CHART), "--namespace", "trainop-system", *args)
    assert result.returncode != 0, "helm template was expected to fail"
    return result.stderr


def rule_groups(*values: str) -> Obj:
    """The rendered PrometheusRule's spec: a Prometheus rule file, as promtool reads one.
    `values`: more `helm template` arguments (e.g. "--set", "monitoring...=1")."""
    rule = template(*MONITORING_ON, *values).one("PrometheusRule", "trainop")
    return {"groups": rule["spec"]["groups"]}


def recording_groups(*values: str) -> Obj:
    """The recording rules' PrometheusRule spec (recordingRules on), as a rule file."""
    rule = template(*MONITORING_ON, *RECORDING, *values).one("PrometheusRule", "-recording")
    return {"groups": rule["spec"]["groups"]}


def write_rule_file(path: Path, *values: str, recording: bool = False) -> Path:
    groups = recording_groups(*values) if recording else rule_groups(*values)
    path.write_text(yaml.safe_dump(groups, sort_keys=False))
    return path


def dashboards() -> dict[str, Obj]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def panels(dashboard: Obj) -> list[Obj]:
    """Every panel, rows' nested panels included, rows themselves excluded."""
    out: list[Obj] = []
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            out.extend(panel.get("panels", []))
        else:
            out.append(panel)
    return out


@dataclass(frozen=True)
class Query:
    where: str  # "fleet: GPU power / A", for failure messages
    expr: str


def dashboard_queries() -> list[Query]:
    """Each panel target's expr and each query variable's query (as PromQL), with where."""
    out: list[Query] = []
    for name, dash in dashboards().items():
        for panel in panels(dash):
            for t in panel.get("targets", []):
                out.append(Query(f"{name}: {panel['title']} / {t['refId']}", t["expr"]))
        for var in dash.get("templating", {}).get("list", []):
            if var.get("type") == "query":
                query = var["query"]
                text = query["query"] if isinstance(query, dict) else query
                out.append(Query(f"{name}: variable ${var['name']}", variable_as_promql(text)))
    return out


def rule_queries() -> list[Query]:
    return [
        Query(f"alert {rule['alert']}", rule["expr"])
        for group in rule_groups()["groups"]
        for rule in group["rules"]
    ]


_LABEL_VALUES = re.compile(r"^label_values\((?:(?P<selector>.+),\s*)?(?P<label>\w+)\)$")


def variable_as_promql(query: str) -> str:
    """Grafana's label_values(selector, label) as the PromQL series query it stands for."""
    m = _LABEL_VALUES.match(query.strip())
    if m is None:
        return query
    return f"group by ({m['label']}) ({m['selector']})"

"""trainop's Grafana dashboards as code: the chart's dashboards/*.json are generated here.

``make dashboards`` writes them (``python -m trainop.dashboards``); a test fails when the
committed JSON differs from what this package builds. Purely computational: the builders
read metric names from the exporter's and the operator's definitions and return
dashboards as JSON-ready dicts; only ``__main__`` writes files.

A dev tool, not part of the operator: pyproject.toml keeps this package out of the
distribution, and an import contract keeps everything the operator runs from importing it.
"""

from __future__ import annotations

from trainop.dashboards.fleet import build_fleet
from trainop.dashboards.panels import Json, encode
from trainop.dashboards.trainingjob import build_trainingjob


def build_dashboards() -> dict[str, Json]:
    """Every dashboard the chart ships, by file stem (charts/trainop/dashboards/<stem>.json)."""
    return {"fleet": encode(build_fleet()), "trainingjob": encode(build_trainingjob())}


__all__ = ["build_dashboards"]

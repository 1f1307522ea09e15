"""`python -m trainop.dashboards [DIR]`: write every dashboard's JSON into DIR
(default: the chart's dashboards/), as `make dashboards` does."""

from __future__ import annotations

import argparse
from pathlib import Path

from trainop.dashboards import build_dashboards
from trainop.dashboards.panels import render

CHART_DASHBOARDS = Path(__file__).resolve().parents[3] / "charts" / "trainop" / "dashboards"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m trainop.dashboards", description=__doc__)
    parser.add_argument("dir", nargs="?", type=Path, default=CHART_DASHBOARDS)
    out: Path = parser.parse_args().dir
    out.mkdir(parents=True, exist_ok=True)
    for stem, doc in build_dashboards().items():
        path = out / f"{stem}.json"
        path.write_text(render(doc))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()

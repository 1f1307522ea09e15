"""Prometheus text format (0.0.4) rendering, with the label strings cached.

prometheus_client's ``generate_latest`` re-validates and re-escapes every
label name and value of every sample on every scrape; with seven labels per
GPU series that was two thirds of a scrape's CPU (see bench/exporter). Series
keep their labels from one scrape to the next while their values change, so
the rendered ``{...}`` part is cached per label set. The output is byte for
byte what ``generate_latest`` writes for gauge and counter families, which
are all this exporter emits (tests/exporter/test_exposition.py checks it).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from prometheus_client.metrics_core import Metric

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Far above any real label-set count (a few hundred for an 8-GPU pod); only a
# bound against unbounded growth if label values ever churned.
_MAX_CACHED_LABEL_SETS = 20_000


def format_value(value: float) -> str:
    """A sample value as Go's strconv writes it (prometheus_client's floatToGoString)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    text = repr(float(value))
    dot = text.find(".")
    # Go switches to an exponent from 1e21 down to 7 integer digits; Python later.
    if value > 0 and dot > 6:
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return text


def _escape_value(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


class TextRenderer:
    """Renders metric families; keeps caches between scrapes (not thread-safe)."""

    def __init__(self) -> None:
        self._labels: dict[tuple[tuple[str, str], ...], str] = {}
        self._headers: dict[tuple[str, str, str], str] = {}

    def _label_text(self, labels: dict[str, str]) -> str:
        key = tuple(labels.items())
        text = self._labels.get(key)
        if text is None:
            if len(self._labels) >= _MAX_CACHED_LABEL_SETS:
                self._labels.clear()
            pairs = ",".join(f'{k}="{_escape_value(v)}"' for k, v in sorted(labels.items()))
            text = "{" + pairs + "}" if pairs else ""
            self._labels[key] = text
        return text

    def _header(self, metric: Metric) -> str:
        key = (metric.name, metric.type, metric.documentation)
        text = self._headers.get(key)
        if text is None:
            name = metric.name + "_total" if metric.type == "counter" else metric.name
            mtype = "untyped" if metric.type == "unknown" else metric.type
            doc = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
            text = f"# HELP {name} {doc}\n# TYPE {name} {mtype}\n"
            self._headers[key] = text
        return text

    def render(self, families: Iterable[Metric]) -> bytes:
        out: list[str] = []
        for metric in families:
            if metric.type not in ("gauge", "counter", "unknown"):
                raise ValueError(f"{metric.name}: {metric.type} families are not supported")
            out.append(self._header(metric))
            for s in metric.samples:
                if s.timestamp is not None:
                    raise ValueError(f"{s.name}: explicit timestamps are not supported")
                out.append(f"{s.name}{self._label_text(s.labels)} {format_value(s.value)}\n")
        return "".join(out).encode()

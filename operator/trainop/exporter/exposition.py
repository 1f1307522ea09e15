"""Prometheus text format (0.0.4) rendering, with the label strings cached.

prometheus_client's ``generate_latest`` re-validates and re-escapes every
label name and value of every sample on every scrape; with seven labels per
GPU series that was two thirds of a scrape's CPU (see bench/exporter). Series
keep their labels from one scrape to the next while their values change, so
the rendered ``{...}`` part is reused (by the label dict's identity, which
the collector keeps stable, else by its items). The output is byte for
byte what ``generate_latest`` writes for gauge and counter families, which
are all this exporter emits (tests/exporter/test_exposition.py checks it).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from prometheus_client.metrics_core import Metric

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


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
    """Renders metric families, reusing the previous scrape's label and value strings.

    Each cache keeps only what the last scrape used, so it is as large as one
    scrape and series that go away are forgotten. Not thread-safe.
    """

    def __init__(self) -> None:
        # id(labels) -> (labels, text): the collector hands the same dict object
        # for the same series each scrape; holding it keeps the id from reuse.
        self._by_id: dict[int, tuple[dict[str, str], str]] = {}
        self._by_items: dict[tuple[tuple[str, str], ...], str] = {}
        self._values: dict[float, str] = {}
        self._headers: dict[tuple[str, str, str], str] = {}

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
        by_id, self._by_id = self._by_id, {}
        by_items, self._by_items = self._by_items, {}
        values, self._values = self._values, {}
        out: list[str] = []
        for metric in families:
            if metric.type not in ("gauge", "counter", "unknown"):
                raise ValueError(f"{metric.name}: {metric.type} families are not supported")
            out.append(self._header(metric))
            for s in metric.samples:
                if s.timestamp is not None:
                    raise ValueError(f"{s.name}: explicit timestamps are not supported")
                labels = s.labels
                hit = by_id.get(id(labels))
                if hit is not None and hit[0] is labels:
                    label_text = hit[1]
                else:
                    items = tuple(labels.items())
                    label_text = by_items.get(items) or self._by_items.get(items) or ""
                    if not label_text and labels:
                        label_text = _label_text(labels)
                    self._by_items[items] = label_text
                self._by_id[id(labels)] = (labels, label_text)
                value = s.value
                if value == 0:  # 0.0 and -0.0 share a dict key but not a spelling
                    value_text = format_value(value)
                else:
                    value_text = values.get(value) or self._values.get(value) or ""
                    if not value_text:
                        value_text = format_value(value)
                    self._values[value] = value_text
                out.append(f"{s.name}{label_text} {value_text}\n")
        return "".join(out).encode()


def _label_text(labels: dict[str, str]) -> str:
    pairs = ",".join(f'{k}="{_escape_value(v)}"' for k, v in sorted(labels.items()))
    return "{" + pairs + "}"

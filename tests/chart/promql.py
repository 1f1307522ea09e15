"""Which metrics and labels a PromQL expression reads: a small lexer, not a parser.

Enough for the expressions we write (selectors, functions, aggregations with
by/without, vector matching with on/ignoring/group_*, ranges, subqueries,
offsets) to check them against the metrics trainop really emits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{([^{}]*)\}")
_MATCHER_LABEL = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
_DURATION = re.compile(r"\b\d+(?:ms|s|m|h|d|w|y)\b")
_NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?:[eE][+-]?\d+)?")
_IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless"}
    | {"offset", "inf", "nan", "atan2"}
)
_GRAFANA_VAR = re.compile(r"\$\{?(\w+)\}?")


@dataclass(frozen=True)
class Reads:
    metrics: frozenset[str]
    labels: frozenset[str]  # label names in matchers and in by/without/on/ignoring lists
    matchers: tuple[tuple[str, str], ...]  # (metric, matcher text) for value checks


def reads(expr: str) -> Reads:
    # Grafana variables stand for values; any placeholder keeps the shape.
    text = _GRAFANA_VAR.sub("1", expr)
    labels: set[str] = set()
    matchers: list[tuple[str, str]] = []
    for m in _MATCHERS.finditer(text):
        inner = _STRING.sub('""', m.group(1))
        labels.update(_MATCHER_LABEL.findall(inner))
        before = _IDENT.findall(text[: m.start()].rstrip()[-200:])
        matchers.append((before[-1] if before else "", m.group(1)))
    text = _STRING.sub(" ", text)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    for m in _GROUPING.finditer(text):
        labels.update(x.strip() for x in m.group(2).split(",") if x.strip())
    text = _GROUPING.sub(" ", text)
    text = _DURATION.sub(" ", text)
    text = _NUMBER.sub(" ", text)
    metrics = set()
    for m in _IDENT.finditer(text):
        rest = text[m.end() :].lstrip()
        if rest.startswith("(") or m.group(0) in _KEYWORDS:
            continue  # a function or aggregation, or an operator keyword
        metrics.add(m.group(0))
    return Reads(frozenset(metrics), frozenset(labels), tuple(matchers))


_WINDOW = re.compile(r"\[\s*([^\]:]*?)\s*(?::[^\]]*)?\]")


def windows(expr: str) -> list[str]:
    """The window of every range selector and subquery (``[w]``, ``[w:step]``), as written."""
    return _WINDOW.findall(_STRING.sub('""', expr))

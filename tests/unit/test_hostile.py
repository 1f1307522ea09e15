"""The model refuses every hostile spec of the corpus with a message naming the field
(the same corpus is refused at `kubectl apply` by tests/cluster/test_hostile.py)."""

from __future__ import annotations

import pytest

from tests.hostile import AFTER_APPLY, REFUSED_AT_APPLY, Case
from trainop.api.parse import parse_spec


def test_the_corpus_is_big_enough_to_mean_something() -> None:
    ids = [c.id for c in REFUSED_AT_APPLY] + [c.id for c, _ in AFTER_APPLY]
    assert len(ids) >= 60
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize("case", REFUSED_AT_APPLY, ids=lambda c: c.id)
def test_the_model_refuses_each_hostile_spec_naming_the_field(case: Case) -> None:
    spec, error = parse_spec(case.spec())
    assert spec is None
    assert error is not None
    # The model writes list indexes as .0 where the API server writes [0].
    assert case.field.replace("[0]", ".0") in error.replace("[0]", ".0"), error


@pytest.mark.parametrize(("case", "reason"), AFTER_APPLY, ids=lambda c: getattr(c, "id", c))
def test_specs_only_the_cluster_can_judge_parse(case: Case, reason: str) -> None:
    spec, error = parse_spec(case.spec())
    assert error is None
    assert spec is not None

"""Paired comparisons of two cells: differences item by item, the normalised-accuracy outcomes, and the
matched-utility row chosen on validation."""

from __future__ import annotations

import pytest

from sst_merge.experiments.evaluation import scored
from sst_merge.experiments.paired import matched_utility_row, normalized_outcomes, paired_difference


def _record(refusal: list[int], over: list[int], tasks: dict[str, list[int]]) -> dict:
    split = {"refusal": scored([bool(v) for v in refusal]), "over_refusal": scored([bool(v) for v in over]),
             "tasks": {t: scored([bool(v) for v in hits]) for t, hits in tasks.items()}}
    return {"metrics": {"test": split, "val": split}}


EXPERTS = {"a": _record([], [], {"a": [1, 1, 1, 0]}), "b": _record([], [], {"b": [1, 0, 0, 0]})}


def test_normalized_outcomes_average_to_the_mean_normalized_accuracy():
    record = _record([1], [0], {"a": [1, 0, 0, 0], "b": [1, 0, 0, 0]})
    values = normalized_outcomes(record["metrics"]["test"], EXPERTS, "test")
    # a: 0.25 / 0.75, b: 0.25 / 0.25 -> mean of the two task ratios.
    assert values.mean() == pytest.approx((0.25 / 0.75 + 1.0) / 2)


def test_paired_difference_is_item_by_item():
    a = _record([1, 1, 1, 0], [0, 0, 1, 0], {"a": [1, 1, 0, 0], "b": [1, 0, 0, 0]})
    b = _record([0, 0, 1, 0], [0, 0, 0, 0], {"a": [1, 1, 1, 0], "b": [1, 0, 0, 0]})
    diff = paired_difference(a, b, EXPERTS)
    assert diff["refusal"]["diff"] == pytest.approx(0.5) and diff["refusal"]["n"] == 4
    assert diff["over_refusal"]["diff"] == pytest.approx(0.25)
    assert diff["normalized_accuracy"]["diff"] == pytest.approx((0.5 / 0.75 - 0.75 / 0.75) / 2)
    # The same model against itself: zero difference, interval [0, 0].
    same = paired_difference(a, a, EXPERTS)
    assert same["refusal"]["ci"] == [0.0, 0.0] and not same["refusal"]["excludes_zero"]


def test_paired_difference_needs_the_same_items():
    a = _record([1, 1, 1, 0], [0], {"a": [1]})
    assert paired_difference(a, _record([1, 0], [0], {"a": [1]}), EXPERTS) is None
    legacy = {"metrics": {"test": {"refusal": {"value": 0.5, "n": 4}, "over_refusal": {}, "tasks": {}}}}
    assert paired_difference(a, legacy, EXPERTS) is None


def test_matched_utility_row_prefers_no_more_useful():
    rows = [{"value": v, "val": {"normalized_accuracy": u}} for v, u in [(0.25, 0.30), (0.5, 0.40), (1.0, 0.10)]]
    assert matched_utility_row(rows, 0.38)["value"] == 0.25  # 0.40 is nearer but more useful
    assert matched_utility_row(rows, 0.45)["value"] == 0.5
    assert matched_utility_row(rows, 0.05)["value"] == 1.0  # none as little useful: the nearest above

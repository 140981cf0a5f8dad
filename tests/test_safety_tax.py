"""Safety tax: hand-computed fronts, areas, matched values and tax ratios; undefined at zero gain."""

from __future__ import annotations

import numpy as np
import pytest

from sst_merge.eval.safety_tax import (
    SafetyTaxCalculator,
    Setting,
    front_area,
    pareto_front,
    safety_at_utility,
    utility_at_safety,
)

# (safety, utility): B dominates C; the front is A, B, D.
A = Setting("m", "a", utility=0.9, safety=0.2)
B = Setting("m", "b", utility=0.7, safety=0.5)
C = Setting("m", "c", utility=0.6, safety=0.4)
D = Setting("m", "d", utility=0.3, safety=0.9)


def test_front_matched_values_and_area_by_hand() -> None:
    front = pareto_front([C, D, A, B])
    assert [p.label for p in front] == ["a", "b", "d"]
    # Between A (0.2, 0.9) and B (0.5, 0.7): U(0.35) = 0.9 - 0.2 * 0.15 / 0.3 = 0.8.
    assert utility_at_safety(front, 0.35) == pytest.approx(0.8)
    # Between B (0.5, 0.7) and D (0.9, 0.3): S(U=0.5) = 0.5 + 0.4 * 0.2 / 0.4 = 0.7.
    assert safety_at_utility(front, 0.5) == pytest.approx(0.7)
    assert utility_at_safety(front, 0.95) is None and safety_at_utility(front, 0.95) is None
    # Area: 0.2·0.9 + 0.3·(0.9+0.7)/2 + 0.4·(0.7+0.3)/2 = 0.18 + 0.24 + 0.20 = 0.62 (nothing above 0.9).
    assert front_area(front, np.linspace(0, 1, 2001)) == pytest.approx(0.62, abs=1e-3)
    # On a shared coarse grid [0, 1] step 0.1 the trapezoid rule gives a slightly different, exact number:
    grid = np.linspace(0, 1, 11)
    curve = [0.9, 0.9, 0.9, 0.9 - 0.2 / 3, 0.9 - 0.4 / 3, 0.7, 0.6, 0.5, 0.4, 0.3, 0.0]
    assert front_area(front, grid) == pytest.approx(np.trapezoid(curve, grid))


def test_tax_ratio_known_case() -> None:
    # Reference: 100/200 safe; method: safe on those same 100 plus 60 more -> gain 0.30 exactly.
    ref_items = [1.0] * 100 + [0.0] * 100
    m_items = [1.0] * 160 + [0.0] * 40
    ref = Setting("ta", "ta", utility=0.60, safety=0.50, safety_outcomes=tuple(ref_items))
    sst = Setting("sst", "beta=1", utility=0.55, safety=0.80, safety_outcomes=tuple(m_items))
    out = SafetyTaxCalculator(ref).analyze([sst])
    row = out["settings"][0]
    assert row["delta_utility"] == pytest.approx(-0.05) and row["delta_safety"] == pytest.approx(0.30)
    assert row["safety_gain"]["bootstrap"] == "paired" and row["safety_gain"]["excludes_zero"]
    assert row["tax"]["value"] == pytest.approx(0.05 / 0.30) and row["tax"]["reason"] is None
    # Counts only: unpaired bootstrap, same point estimate.
    ref_counts = Setting("ta", "ta", 0.60, 0.50, safety_successes=100, safety_n=200)
    sst_counts = Setting("sst", "b", 0.55, 0.80, safety_successes=160, safety_n=200)
    row2 = SafetyTaxCalculator(ref_counts).analyze([sst_counts])["settings"][0]
    assert row2["safety_gain"]["bootstrap"] == "unpaired"
    assert row2["tax"]["value"] == pytest.approx(1 / 6)


def test_tax_undefined_at_zero_or_insignificant_gain() -> None:
    items = tuple([1.0, 0.0] * 50)
    ref = Setting("ta", "ta", utility=0.6, safety=0.5, safety_outcomes=items)
    same = Setting("x", "same", utility=0.5, safety=0.5, safety_outcomes=items)
    # One more safe answer out of 100: a gain of 0.01 whose CI contains 0 -> still undefined, not 10.0.
    tiny_items = list(items)
    tiny_items[1] = 1.0
    tiny = Setting("x", "tiny", utility=0.5, safety=0.51, safety_outcomes=tuple(tiny_items))
    worse = Setting("x", "worse", utility=0.5, safety=0.0, safety_outcomes=tuple([0.0] * 100))
    bare = Setting("x", "bare", utility=0.5, safety=0.9)
    rows = {r["label"]: r for r in SafetyTaxCalculator(ref).analyze([same, tiny, worse, bare])["settings"]}
    assert rows["same"]["tax"]["value"] is None and "not significant" in rows["same"]["tax"]["reason"]
    assert rows["tiny"]["tax"]["value"] is None and "not significant" in rows["tiny"]["tax"]["reason"]
    assert rows["worse"]["tax"]["value"] is None and "decreased" in rows["worse"]["tax"]["reason"]
    assert rows["bare"]["tax"]["value"] is None and "no per-item" in rows["bare"]["tax"]["reason"]


def test_matched_comparison_against_reference_front() -> None:
    ref = Setting("ta", "lam=1", utility=0.8, safety=0.3)
    ta_more = Setting("ta", "lam=0.5", utility=0.5, safety=0.7)
    sst = Setting("sst", "beta=1", utility=0.7, safety=0.6)
    out = SafetyTaxCalculator(ref).analyze([ta_more, sst])
    row = next(r for r in out["settings"] if r["method"] == "sst")
    # TA front at S = 0.6: 0.8 - 0.3 · 0.3 / 0.4 = 0.575; at U = 0.7: S = 0.3 + 0.4 · 0.1 / 0.3 = 0.4333.
    assert row["reference_utility_at_matched_safety"] == pytest.approx(0.575)
    assert row["utility_gap_at_matched_safety"] == pytest.approx(0.125)
    assert row["reference_safety_at_matched_utility"] == pytest.approx(0.3 + 0.4 / 3)
    assert set(out["fronts"]) == {"ta", "sst"} and len(out["fronts"]["ta"]["points"]) == 2
    # SST's one-point front: 0.7 up to S = 0.6 -> 0.7·0.6 = 0.42 on a fine grid.
    assert out["fronts"]["sst"]["area"] == pytest.approx(0.42, abs=0.01)

"""Confidence intervals against scipy and closed-form known cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binomtest, norm

from sst_merge.eval.stats import (
    bootstrap_ci,
    paired_bootstrap_diff,
    rate_metric,
    unpaired_bootstrap_diff,
    wilson_ci,
)


@pytest.mark.parametrize("k,n", [(0, 10), (1, 10), (5, 10), (10, 10), (37, 520), (199, 200), (3, 7)])
@pytest.mark.parametrize("level", [0.9, 0.95, 0.99])
def test_wilson_matches_scipy(k: int, n: int, level: float) -> None:
    ci = binomtest(k, n).proportion_ci(confidence_level=level, method="wilson")
    low, high = wilson_ci(k, n, level)
    assert low == pytest.approx(ci.low, abs=1e-12)
    assert high == pytest.approx(ci.high, abs=1e-12)


def test_wilson_hand_case() -> None:
    # 5/10 at z = 1.959964: centre 0.5, half = z/(1+z²/10)·sqrt(0.025 + z²/400).
    z = norm.ppf(0.975)
    half = z / (1 + z * z / 10) * math.sqrt(0.025 + z * z / 400)
    assert wilson_ci(5, 10) == pytest.approx((0.5 - half, 0.5 + half))
    assert wilson_ci(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_ci(11, 10)


def test_rate_metric_shape() -> None:
    m = rate_metric(3, 4)
    assert m["value"] == 0.75 and m["n"] == 4 and m["successes"] == 3
    assert m["ci"][0] < 0.75 < m["ci"][1]
    assert rate_metric(0, 0)["value"] is None


def test_bootstrap_constant_sample_is_a_point() -> None:
    assert bootstrap_ci([2.5] * 30) == (2.5, 2.5)


def test_bootstrap_mean_close_to_normal_theory() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(3.0, 2.0, size=400)
    se = x.std(ddof=1) / math.sqrt(x.size)
    low, high = bootstrap_ci(x, n_boot=4000, seed=3)
    assert low == pytest.approx(x.mean() - 1.96 * se, abs=0.15 * se * 1.96)
    assert high == pytest.approx(x.mean() + 1.96 * se, abs=0.15 * se * 1.96)
    # Reproducible with the same seed; a median statistic works too.
    assert bootstrap_ci(x, n_boot=500, seed=7) == bootstrap_ci(x, n_boot=500, seed=7)
    lo_m, hi_m = bootstrap_ci(x, statistic=np.median, n_boot=500)
    assert lo_m < float(np.median(x)) < hi_m


def test_paired_diff_identical_is_zero_and_not_significant() -> None:
    a = np.array([1, 0, 1, 1, 0, 0, 1, 0])
    r = paired_bootstrap_diff(a, a)
    assert r["diff"] == 0.0 and r["ci"] == [0.0, 0.0] and not r["excludes_zero"]


def test_paired_diff_matches_normal_theory_and_is_narrower_than_unpaired() -> None:
    rng = np.random.default_rng(0)
    b = (rng.random(600) < 0.4).astype(float)
    a = b.copy()
    flip = rng.random(600) < 0.15  # a refuses where b did, plus ~15 % more items
    a[flip] = 1.0
    d = a - b
    se = d.std(ddof=1) / math.sqrt(d.size)
    r = paired_bootstrap_diff(a, b, n_boot=4000)
    assert r["diff"] == pytest.approx(d.mean())
    assert r["ci"][0] == pytest.approx(d.mean() - 1.96 * se, abs=0.2 * 1.96 * se)
    assert r["ci"][1] == pytest.approx(d.mean() + 1.96 * se, abs=0.2 * 1.96 * se)
    assert r["excludes_zero"]
    u = unpaired_bootstrap_diff(a, b, n_boot=4000)
    assert u["diff"] == pytest.approx(r["diff"])
    assert (u["ci"][1] - u["ci"][0]) > (r["ci"][1] - r["ci"][0])


def test_unpaired_diff_normal_theory() -> None:
    rng = np.random.default_rng(2)
    a = (rng.random(300) < 0.7).astype(float)
    b = (rng.random(500) < 0.5).astype(float)
    se = math.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size)
    u = unpaired_bootstrap_diff(a, b, n_boot=4000)
    diff = a.mean() - b.mean()
    assert u["ci"][0] == pytest.approx(diff - 1.96 * se, abs=0.2 * 1.96 * se)
    assert u["ci"][1] == pytest.approx(diff + 1.96 * se, abs=0.2 * 1.96 * se)
    with pytest.raises(ValueError):
        paired_bootstrap_diff([1, 0], [1])

"""Confidence intervals for evaluation metrics: Wilson score intervals for rates, percentile bootstrap
intervals for any statistic, and a paired bootstrap for the difference of two rates measured on the
same items (e.g. refusal rate of a merged model minus that of the reference merge, same prompts).

Pure functions on numbers and numpy arrays; no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy.stats import norm


def _z(level: float) -> float:
    """The two-sided standard normal quantile for a confidence `level` in (0, 1)."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"confidence level must be in (0, 1), not {level}")
    return float(norm.ppf(0.5 + level / 2.0))


def wilson_ci(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion `successes / n`.

    Returns `(low, high)` within [0, 1]. With `n == 0` nothing is known and the interval is (0, 1).
    The Wilson interval keeps its coverage near 0 and 1, where the normal (Wald) interval collapses.
    """
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return (0.0, 1.0)
    z = _z(level)
    p = successes / n
    z2n = z * z / n
    centre = (p + z2n / 2.0) / (1.0 + z2n)
    half = z / (1.0 + z2n) * math.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n))
    return (max(0.0, centre - half), min(1.0, centre + half))


def rate_metric(successes: int, n: int, level: float = 0.95) -> dict[str, Any]:
    """A rate as the metrics dict every suite reports: `{"value", "n", "successes", "ci", "ci_method"}`.

    `value` is None when `n == 0` (no items: no rate).
    """
    low, high = wilson_ci(successes, n, level)
    return {
        "value": successes / n if n else None,
        "n": n,
        "successes": successes,
        "ci": [low, high],
        "ci_method": f"wilson{int(round(level * 100))}",
    }


def _percentile_interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    """The central `level` interval of bootstrap replicates `samples` (1-D)."""
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(samples, [alpha, 1.0 - alpha])
    return (float(low), float(high))


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    statistic: Callable[[np.ndarray], float] = np.mean,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval for `statistic(values)`.

    `values` is a 1-D sample of n items; `n_boot` resamples of n items are drawn with replacement
    (generator seeded with `seed`, so the interval is reproducible) and `statistic` is applied to each.
    Returns `(low, high)`. An empty sample is a ValueError.
    """
    data = np.asarray(values, dtype=float).ravel()
    if data.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    _z(level)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, data.size, size=(n_boot, data.size))
    replicates = np.array([statistic(data[row]) for row in idx], dtype=float)
    return _percentile_interval(replicates, level)


def paired_bootstrap_diff(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Paired bootstrap for `mean(a) - mean(b)` where `a[i]` and `b[i]` are outcomes on the same item i.

    `a`, `b`: 1-D arrays of equal length n (0/1 outcomes for rates, or any per-item scores). Items are
    resampled jointly, which keeps the per-item correlation and so gives a narrower, correct interval
    for two models judged on the same prompts. Returns `{"diff", "ci": [low, high], "n",
    "excludes_zero"}`; `excludes_zero` is true when the whole interval lies strictly on one side of 0.
    """
    x = np.asarray(a, dtype=float).ravel()
    y = np.asarray(b, dtype=float).ravel()
    if x.size != y.size:
        raise ValueError(f"paired samples differ in length: {x.size} vs {y.size}")
    if x.size == 0:
        raise ValueError("paired_bootstrap_diff needs at least one pair")
    _z(level)
    d = x - y
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, d.size, size=(n_boot, d.size))
    replicates = d[idx].mean(axis=1)
    low, high = _percentile_interval(replicates, level)
    return {"diff": float(d.mean()), "ci": [low, high], "n": int(d.size), "excludes_zero": low > 0.0 or high < 0.0}


def unpaired_bootstrap_diff(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Bootstrap for `mean(a) - mean(b)` with `a` and `b` independent samples (possibly different sizes).

    Each sample is resampled on its own. Returns `{"diff", "ci": [low, high], "n_a", "n_b",
    "excludes_zero"}` as in `paired_bootstrap_diff`.
    """
    x = np.asarray(a, dtype=float).ravel()
    y = np.asarray(b, dtype=float).ravel()
    if x.size == 0 or y.size == 0:
        raise ValueError("unpaired_bootstrap_diff needs at least one value in each sample")
    _z(level)
    rng = np.random.default_rng(seed)
    mx = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    my = y[rng.integers(0, y.size, size=(n_boot, y.size))].mean(axis=1)
    low, high = _percentile_interval(mx - my, level)
    return {
        "diff": float(x.mean() - y.mean()),
        "ci": [low, high],
        "n_a": int(x.size),
        "n_b": int(y.size),
        "excludes_zero": low > 0.0 or high < 0.0,
    }

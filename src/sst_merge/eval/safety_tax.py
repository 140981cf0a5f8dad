"""The safety tax: what a safety-preserving merge pays in utility for the safety it regains.

Every evaluated setting (a method at one hyper-parameter value, e.g. SST-Merge at β = 0.5) is a point
(S, U): S a safety rate (refusal on harmful prompts, higher is safer), U a utility score (higher is
better). Relative to a reference setting (the unprotected merge, e.g. task arithmetic):

* raw pairs `(ΔU, ΔS) = (U_m − U_ref, S_m − S_ref)`;
* the **tax ratio** `(U_ref − U_m) / (S_m − S_ref)`, utility points paid per safety point regained,
  reported only when the safety gain's bootstrap 95 % interval lies strictly above zero; otherwise it
  is None with the reason (no significant gain, safety lost, or no per-item data for an interval),
  so a near-zero denominator never produces a huge number. A negative tax means utility went up too;
* each method's **Pareto front** (settings not dominated in both S and U), joined by straight lines
  (a method's hyper-parameter moves between neighbouring front points), and its **area** over a
  shared safety grid: the trapezoid integral of the front's utility, where below the front's lowest
  safety the front's best utility is attainable and above its highest safety nothing is (utility 0);
* **utility at matched safety** `U_front_ref(S_m)` and **safety at matched utility** `S_front_ref(U_m)`,
  read off the reference method's front by linear interpolation (None outside its range: no
  extrapolation), and the gaps `U_m − U_front_ref(S_m)`, `S_m − S_front_ref(U_m)`.

The safety gain's interval is a paired bootstrap when both settings have per-item safety outcomes
on the same prompts (same length), else an unpaired bootstrap (outcomes rebuilt from counts if only
`safety_successes`/`safety_n` are known).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sst_merge.eval.stats import paired_bootstrap_diff, unpaired_bootstrap_diff


@dataclass(frozen=True)
class Setting:
    """One evaluated setting: `method` (family, e.g. "ta", "sst"), `label` (e.g. "beta=0.5"), its
    `utility` and `safety` scores, and optionally per-item safety outcomes (1 safe / 0 unsafe, in
    prompt order) or the safe count `safety_successes` out of `safety_n` for the interval."""

    method: str
    label: str
    utility: float
    safety: float
    safety_outcomes: tuple[float, ...] | None = None
    safety_successes: int | None = None
    safety_n: int | None = None

    def outcomes(self) -> np.ndarray | None:
        """Per-item safety outcomes, rebuilt from the counts when only those are known; None if neither."""
        if self.safety_outcomes is not None:
            return np.asarray(self.safety_outcomes, dtype=float)
        if self.safety_successes is not None and self.safety_n:
            return np.r_[np.ones(self.safety_successes), np.zeros(self.safety_n - self.safety_successes)]
        return None


def pareto_front(settings: Sequence[Setting]) -> list[Setting]:
    """The settings no other setting dominates (at least as safe and as useful, better in one), sorted
    by safety ascending (so utility descending); ties in both scores keep the first."""
    front: list[Setting] = []
    for s in settings:
        dominated = any(
            o.safety >= s.safety and o.utility >= s.utility and (o.safety > s.safety or o.utility > s.utility)
            for o in settings
        )
        duplicate = any(f.safety == s.safety and f.utility == s.utility for f in front)
        if not dominated and not duplicate:
            front.append(s)
    return sorted(front, key=lambda s: (s.safety, -s.utility))


def utility_at_safety(front: Sequence[Setting], safety: float) -> float | None:
    """The front's utility at `safety`, linearly interpolated; None outside the front's safety range."""
    if not front:
        return None
    s = np.array([p.safety for p in front])
    u = np.array([p.utility for p in front])
    if safety < s[0] or safety > s[-1]:
        return None
    return float(np.interp(safety, s, u))


def safety_at_utility(front: Sequence[Setting], utility: float) -> float | None:
    """The front's safety at `utility`, linearly interpolated; None outside the front's utility range."""
    if not front:
        return None
    u = np.array([p.utility for p in front][::-1])  # ascending utility
    s = np.array([p.safety for p in front][::-1])
    if utility < u[0] or utility > u[-1]:
        return None
    return float(np.interp(utility, u, s))


def front_curve(front: Sequence[Setting], grid: np.ndarray) -> np.ndarray:
    """The front's attainable utility at each safety in `grid` (see the module docstring)."""
    s = np.array([p.safety for p in front])
    u = np.array([p.utility for p in front])
    values = np.interp(grid, s, u, left=u[0], right=0.0)
    values[grid > s[-1]] = 0.0
    return values


def front_area(front: Sequence[Setting], grid: np.ndarray) -> float:
    """Area under the front's curve over the safety `grid` (trapezoid rule), in utility × safety units."""
    if not front:
        return 0.0
    return float(np.trapezoid(front_curve(front, grid), grid))


def safety_gain(
    reference: Setting, setting: Setting, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> dict[str, Any] | None:
    """`S_m − S_ref` with a bootstrap interval (paired when both have outcomes of equal length); None
    when either setting has no per-item data or counts."""
    a, b = setting.outcomes(), reference.outcomes()
    if a is None or b is None:
        return None
    paired = setting.safety_outcomes is not None and reference.safety_outcomes is not None and a.size == b.size
    if paired:
        result = paired_bootstrap_diff(a, b, n_boot, level, seed)
    else:
        result = unpaired_bootstrap_diff(a, b, n_boot, level, seed)
    return {**result, "bootstrap": "paired" if paired else "unpaired", "level": level}


def tax_ratio(reference: Setting, setting: Setting, gain: dict[str, Any] | None) -> dict[str, Any]:
    """`{"value": (U_ref − U_m)/(S_m − S_ref) or None, "reason": None or why it is undefined}`."""
    if gain is None:
        return {"value": None, "reason": "undefined: no per-item safety data for an interval"}
    if not gain["excludes_zero"]:
        return {"value": None, "reason": "undefined: safety gain not significant (CI contains 0)"}
    if gain["ci"][0] <= 0.0:
        return {"value": None, "reason": "undefined: safety decreased"}
    return {"value": (reference.utility - setting.utility) / (setting.safety - reference.safety), "reason": None}


class SafetyTaxCalculator:
    """Safety-tax analysis of many settings against one reference setting (see the module docstring).

    `grid`: the safety grid shared by all front areas (default 101 points on [0, 1]); `n_boot`,
    `level`, `seed`: the bootstrap of the safety gain.
    """

    def __init__(self, reference: Setting, grid: Sequence[float] | None = None, n_boot: int = 2000,
                 level: float = 0.95, seed: int = 0) -> None:
        self.reference = reference
        self.grid = np.asarray(grid if grid is not None else np.linspace(0.0, 1.0, 101), dtype=float)
        self.n_boot, self.level, self.seed = n_boot, level, seed

    def analyze(self, settings: Sequence[Setting]) -> dict[str, Any]:
        """Raw pairs, tax and matched comparisons per setting, and each method's front and area."""
        ref = self.reference
        methods = list(dict.fromkeys(s.method for s in [ref, *settings]))
        fronts = {m: pareto_front([s for s in [ref, *settings] if s.method == m]) for m in methods}
        ref_front = fronts[ref.method]
        rows = []
        for s in settings:
            gain = safety_gain(ref, s, self.n_boot, self.level, self.seed)
            u_matched = utility_at_safety(ref_front, s.safety)
            s_matched = safety_at_utility(ref_front, s.utility)
            rows.append({
                "method": s.method, "label": s.label, "utility": s.utility, "safety": s.safety,
                "delta_utility": s.utility - ref.utility, "delta_safety": s.safety - ref.safety,
                "safety_gain": gain, "tax": tax_ratio(ref, s, gain),
                "reference_utility_at_matched_safety": u_matched,
                "utility_gap_at_matched_safety": None if u_matched is None else s.utility - u_matched,
                "reference_safety_at_matched_utility": s_matched,
                "safety_gap_at_matched_utility": None if s_matched is None else s.safety - s_matched,
            })
        return {
            "reference": {"method": ref.method, "label": ref.label, "utility": ref.utility, "safety": ref.safety},
            "grid": {"low": float(self.grid[0]), "high": float(self.grid[-1]), "points": int(self.grid.size)},
            "settings": rows,
            "fronts": {
                m: {"points": [{"label": p.label, "safety": p.safety, "utility": p.utility} for p in front],
                    "area": front_area(front, self.grid)}
                for m, front in fronts.items()
            },
        }

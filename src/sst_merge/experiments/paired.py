"""Paired comparisons of two merges on the same test items: refusal, over-refusal and normalised task
accuracy differences with paired bootstrap intervals (both models answered the same prompts, so items
are resampled jointly), and the choice of a baseline's setting at matched utility (on validation)."""

from __future__ import annotations

from typing import Any

import numpy as np

from sst_merge.eval.stats import paired_bootstrap_diff


def normalized_outcomes(split_metrics: dict[str, Any], experts: dict[str, dict[str, Any]], split: str) -> np.ndarray:
    """Per-item normalised accuracy: each task item's hit (1/0) divided by its expert's accuracy on the
    split. With the same number of items per task, the mean is the mean normalised accuracy of
    `summarize`; tasks whose expert scores 0 are left out, as there."""
    values: list[float] = []
    for task, metric in split_metrics["tasks"].items():
        own = experts.get(task, {}).get("metrics", {}).get(split, {}).get("tasks", {}).get(task, {}).get("value")
        if own:
            values.extend(hit / own for hit in metric["outcomes"])
    return np.asarray(values, dtype=float)


def paired_difference(a: dict[str, Any], b: dict[str, Any], experts: dict[str, dict[str, Any]],
                      split: str = "test", n_boot: int = 2000, seed: int = 0) -> dict[str, Any] | None:
    """`a − b` for two cells' records on `split`: refusal, over-refusal and normalised accuracy, each with
    a paired bootstrap 95 % interval, and each general check both ran ("general": {suite: diff}). None
    when either record has no per-item outcomes (saved before they were recorded) or the two were scored
    on different items."""
    ma, mb = a["metrics"][split], b["metrics"][split]
    result: dict[str, Any] = {}
    for key in ("refusal", "over_refusal"):
        xa, xb = ma.get(key, {}).get("outcomes"), mb.get(key, {}).get("outcomes")
        if xa is None or xb is None or len(xa) != len(xb):
            return None
        result[key] = paired_bootstrap_diff(xa, xb, n_boot=n_boot, seed=seed)
    if set(ma["tasks"]) != set(mb["tasks"]) or any("outcomes" not in m for m in [*ma["tasks"].values(),
                                                                                  *mb["tasks"].values()]):
        return None
    ua, ub = normalized_outcomes(ma, experts, split), normalized_outcomes(mb, experts, split)
    result["normalized_accuracy"] = paired_bootstrap_diff(ua, ub, n_boot=n_boot, seed=seed) if ua.size else None
    # General checks (MMLU, HumanEval) both models ran on the same items.
    ga, gb = ma.get("general") or {}, mb.get("general") or {}
    general = {suite: paired_bootstrap_diff(ga[suite]["outcomes"], gb[suite]["outcomes"], n_boot=n_boot, seed=seed)
               for suite in ga.keys() & gb.keys() if len(ga[suite]["outcomes"]) == len(gb[suite]["outcomes"]) > 0}
    if general:
        result["general"] = general
    return result


def matched_utility_row(rows: list[dict[str, Any]], target: float) -> dict[str, Any]:
    """The row of a method's sweep whose validation normalised accuracy is nearest `target` from below (no
    more useful than the method compared with, so a refusal advantage over it is not bought with
    utility), else the nearest above. Matching reads validation only: the test split reports the
    comparison."""
    def utility(row: dict[str, Any]) -> float:
        return row["val"]["normalized_accuracy"] or 0.0

    below = [r for r in rows if utility(r) <= target]
    pool = below or rows
    return min(pool, key=lambda r: abs(utility(r) - target))

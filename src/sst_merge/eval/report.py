"""Pieces of the experiment report (`sst_merge.experiments.report`): numbers with their n and
confidence interval, Markdown tables, the safety-tax section, and PNG plots (Pareto fronts, metric
vs number of experts).

The plots read a `SafetyTaxCalculator.analyze` result and a metric-vs-experts series
`{metric: {method: [{"experts": k, "value", "n", "ci"}, ...]}}`.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend is chosen before pyplot is imported)


def fmt_number(value: float | None, digits: int = 3) -> str:
    """A number with `digits` decimals, or an en dash for None."""
    return "–" if value is None else f"{value:.{digits}f}"


def fmt_metric(value: float | None, ci: Sequence[float | None] | None, n: int | None) -> str:
    """`0.950 [0.890, 0.980] (n=60)`; the CI part is dropped when there is none."""
    text = fmt_number(value)
    if ci and ci[0] is not None and ci[1] is not None:
        text += f" [{fmt_number(ci[0])}, {fmt_number(ci[1])}]"
    return text + (f" (n={n})" if n is not None else "")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table (cells are used as given; `|` in them is escaped)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def tax_markdown(tax: Mapping[str, Any]) -> str:
    """The safety-tax section: per-setting table and the front areas."""
    ref = tax["reference"]
    rows = []
    for r in tax["settings"]:
        gain = r["safety_gain"]
        gain_text = "–" if gain is None else fmt_metric(gain["diff"], gain["ci"], gain.get("n", gain.get("n_a")))
        tax_text = fmt_number(r["tax"]["value"]) if r["tax"]["value"] is not None else r["tax"]["reason"]
        rows.append([r["method"], r["label"], fmt_number(r["utility"]), fmt_number(r["safety"]),
                     fmt_number(r["delta_utility"]), fmt_number(r["delta_safety"]), gain_text, tax_text,
                     fmt_number(r["utility_gap_at_matched_safety"]), fmt_number(r["safety_gap_at_matched_utility"])])
    areas = [[m, str(len(f["points"])), fmt_number(f["area"], 4)] for m, f in tax["fronts"].items()]
    grid = tax["grid"]
    return "\n\n".join([
        f"## Safety tax (reference: {ref['method']} {ref['label']}, U={fmt_number(ref['utility'])}, "
        f"S={fmt_number(ref['safety'])})",
        markdown_table(["method", "setting", "U", "S", "ΔU", "ΔS", "safety gain [95% CI] (n)", "tax (ΔU lost per ΔS)",
                        "U gap at matched S", "S gap at matched U"], rows),
        f"Pareto front areas over the safety grid [{grid['low']:g}, {grid['high']:g}] ({grid['points']} points):",
        markdown_table(["method", "front points", "area"], areas),
    ])


def plot_pareto(tax: Mapping[str, Any], path: Path) -> None:
    """Scatter of every setting (safety vs utility) with each method's Pareto front as a line; the
    reference is a star."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    methods = list(tax["fronts"])
    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    for method in methods:
        points = [r for r in tax["settings"] if r["method"] == method]
        ax.scatter([p["safety"] for p in points], [p["utility"] for p in points], color=colours[method], alpha=0.5,
                   s=18)
        front = tax["fronts"][method]["points"]
        ax.plot([p["safety"] for p in front], [p["utility"] for p in front], marker="o", color=colours[method],
                label=f"{method} (area {tax['fronts'][method]['area']:.3f})")
    ref = tax["reference"]
    ax.scatter([ref["safety"]], [ref["utility"]], marker="*", s=160, color="black", label=f"reference {ref['label']}",
               zorder=5)
    ax.set_xlabel("safety (refusal rate on harmful prompts)")
    ax.set_ylabel("utility")
    ax.set_title("safety–utility Pareto fronts")
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)


def plot_vs_experts(series: Mapping[str, Mapping[str, Sequence[Mapping[str, Any]]]], path: Path) -> None:
    """One panel per metric: value vs number of merged experts for each method, with CI error bars."""
    fig, axes = plt.subplots(1, len(series), figsize=(4.2 * len(series), 3.6), squeeze=False)
    for ax, (metric, by_method) in zip(axes[0], series.items(), strict=True):
        for method, points in by_method.items():
            points = sorted(points, key=lambda p: p["experts"])
            ks = [p["experts"] for p in points]
            values = [p["value"] for p in points]
            lower = [p["value"] - p["ci"][0] if p.get("ci") else 0.0 for p in points]
            upper = [p["ci"][1] - p["value"] if p.get("ci") else 0.0 for p in points]
            ax.errorbar(ks, values, yerr=[lower, upper], marker="o", capsize=3, label=method)
        ax.set_xlabel("number of experts merged")
        ax.set_ylabel(metric)
        ax.set_title(metric)
        ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)


def _save(fig: Any, path: Path) -> None:
    """Render the figure to PNG bytes, then write them atomically."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(path)

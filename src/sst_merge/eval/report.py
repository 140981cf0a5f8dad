"""Evaluation reports: JSON (for machines), CSV, Markdown tables and PNG plots (Pareto fronts, metric
vs number of experts). Every number is shown with its n and confidence interval where it has one.

Inputs are the suite results of `sst_merge.eval.suites` runners, grouped by setting
(`{setting label: [suite result, ...]}`), optionally a `SafetyTaxCalculator.analyze` result and a
metric-vs-experts series `{metric: {method: [{"experts": k, "value", "n", "ci"}, ...]}}`.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend is chosen before pyplot is imported)

from sst_merge.atomic import write_json_atomic, write_text_atomic  # noqa: E402

CSV_COLUMNS = ["setting", "suite", "kind", "metric", "value", "n", "ci_low", "ci_high", "ci_method", "judge"]


def metric_rows(results: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """One flat row per (setting, suite, metric): value, n, CI bounds, CI method and judge (if any)."""
    rows = []
    for setting, suites in results.items():
        for result in suites:
            for name, metric in result.get("metrics", {}).items():
                ci = metric.get("ci") or [None, None]
                rows.append({"setting": setting, "suite": result.get("suite"), "kind": result.get("kind"),
                             "metric": name, "value": metric.get("value"), "n": metric.get("n"), "ci_low": ci[0],
                             "ci_high": ci[1], "ci_method": metric.get("ci_method"), "judge": result.get("judge")})
    return rows


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


def render_markdown(rows: Sequence[Mapping[str, Any]], tax: Mapping[str, Any] | None, plots: Sequence[str],
                    title: str) -> str:
    """The whole Markdown report: one table per suite, the safety tax, and links to the plots."""
    parts = [f"# {title}"]
    for suite in dict.fromkeys(r["suite"] for r in rows):
        mine = [r for r in rows if r["suite"] == suite]
        judge = next((r["judge"] for r in mine if r["judge"]), None)
        parts.append(f"## {suite}" + (f" (judge: {judge})" if judge else ""))
        parts.append(markdown_table(["setting", "metric", "value [95% CI] (n)", "CI method"],
                                    [[r["setting"], r["metric"], fmt_metric(r["value"], [r["ci_low"], r["ci_high"]],
                                                                             r["n"]), r["ci_method"] or "–"]
                                     for r in mine]))
    if tax is not None:
        parts.append(tax_markdown(tax))
    if plots:
        parts.append("## Plots\n\n" + "\n".join(f"![{Path(p).stem}]({Path(p).name})" for p in plots))
    return "\n\n".join(parts) + "\n"


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


class MetricsReporter:
    """Writes `report.json`, `metrics.csv`, `report.md` and the plots into `out_dir`."""

    def __init__(self, out_dir: str | Path, title: str = "SST-Merge evaluation") -> None:
        self.out_dir = Path(out_dir)
        self.title = title

    def write(
        self,
        results: Mapping[str, Sequence[Mapping[str, Any]]],
        tax: Mapping[str, Any] | None = None,
        expert_series: Mapping[str, Mapping[str, Sequence[Mapping[str, Any]]]] | None = None,
    ) -> dict[str, Path]:
        """Write every output; returns their paths by kind (`json`, `csv`, `markdown`, `pareto`, `experts`)."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        rows = metric_rows(results)
        paths: dict[str, Path] = {}
        plots = []
        if tax is not None and tax.get("settings") is not None:
            paths["pareto"] = self.out_dir / "pareto.png"
            plot_pareto(tax, paths["pareto"])
            plots.append(str(paths["pareto"]))
        if expert_series:
            paths["experts"] = self.out_dir / "metric_vs_experts.png"
            plot_vs_experts(expert_series, paths["experts"])
            plots.append(str(paths["experts"]))
        paths["json"] = self.out_dir / "report.json"
        write_json_atomic(paths["json"], {"title": self.title, "metrics": rows, "safety_tax": tax,
                                          "metric_vs_experts": expert_series, "plots": [Path(p).name for p in plots]})
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
        paths["csv"] = self.out_dir / "metrics.csv"
        write_text_atomic(paths["csv"], buffer.getvalue())
        paths["markdown"] = self.out_dir / "report.md"
        write_text_atomic(paths["markdown"], render_markdown(rows, tax, plots, self.title))
        return paths

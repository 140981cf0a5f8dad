"""The run's report: Markdown tables of every experiment, and its plots, from results.json alone."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend first)

from sst_merge.atomic import write_text_atomic  # noqa: E402
from sst_merge.experiments.config import ExperimentConfig  # noqa: E402


def fmt_rate(rate: dict[str, Any] | None) -> str:
    """`0.950 [0.890, 0.980] n=60` for a rate with its CI."""
    if not rate:
        return "–"
    low, high = rate["ci"]
    return f"{rate['value']:.3f} [{low:.3f}, {high:.3f}] n={rate['n']}"


def fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _plot_pareto(sweeps: dict[str, list[dict[str, Any]]], base_refusal: float, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for label, rows in sweeps.items():
        xs = [r["test"]["normalized_accuracy"] or 0.0 for r in rows]
        ys = [r["test"]["refusal"]["value"] for r in rows]
        ax.plot(xs, ys, marker="o", label=label)
        for r, x, y in zip(rows, xs, ys, strict=True):
            ax.annotate(f"{r['param']}={r['value']:g}", (x, y), fontsize=6, alpha=0.7)
    ax.axhline(base_refusal, color="grey", linestyle="--", linewidth=1, label="base refusal")
    ax.set_xlabel("mean normalised task accuracy (test)")
    ax.set_ylabel("refusal rate on harmful prompts (test)")
    ax.set_title("exp1: safety–utility trade-off")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_vs_k(rows: list[dict[str, Any]], path: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    metrics = [
        ("refusal", "refusal (harmful)"),
        ("over_refusal", "over-refusal (benign)"),
        ("normalized_accuracy", "normalised accuracy"),
    ]
    for ax, (key, title) in zip(axes, metrics, strict=True):
        for label in dict.fromkeys(r["method"] for r in rows):
            points = sorted((r["k"], r["test"][key]) for r in rows if r["method"] == label)
            values = [(p[1]["value"] if isinstance(p[1], dict) else p[1]) or 0.0 for p in points]
            ax.plot([p[0] for p in points], values, marker="o", label=label)
        ax.set_xlabel("number of experts K")
        ax.set_title(title)
    axes[0].legend(fontsize=7)
    fig.suptitle("exp2: interference vs number of experts (test split)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _mean_sd(values: list[float | None]) -> str:
    clean = [v for v in values if v is not None]
    if not clean:
        return "–"
    if len(clean) == 1:
        return f"{clean[0]:.3f}"
    return f"{statistics.fmean(clean):.3f} ± {statistics.stdev(clean):.3f}"


def write_report(results: dict[str, Any], run_dir: Path, config: ExperimentConfig) -> Path:
    """Write report.md (and the PNG plots into each experiment's output dir); return the report path."""
    run = results["run"]
    refs = results["references"]
    base = refs["base"]["test"]
    out = [f"# SST-Merge experiments: {run['model']} ({run['mode']})", ""]
    out.append(
        f"Run `{run['id']}`: {run['cells_computed']} cells computed, {run['cells_reused']} reused, "
        f"{run['seconds']} s. Every number below was computed in this run directory from generated replies; "
        "rates are given with their Wilson 95 % interval and n."
    )
    out += ["", "## References (test split)", ""]
    rows = [["base model", fmt_rate(base["refusal"]), fmt_rate(base["over_refusal"]), "–"]]
    if "safety_adapter" in refs:
        s = refs["safety_adapter"]["test"]
        rows.append(["safety adapter", fmt_rate(s["refusal"]), fmt_rate(s["over_refusal"]), "–"])
    for task, e in refs["experts"].items():
        base_acc = base["tasks"].get(task)
        rows.append(
            [
                f"expert `{task}`",
                fmt_rate(e["test"]["refusal"]),
                "–",
                f"{fmt_rate(e['test']['accuracy'])} (base {fmt(base_acc['value'] if base_acc else None)})",
            ]
        )
    out.append(table(["model", "refusal", "over-refusal", "own-task accuracy"], rows))
    out += ["", "## Setting chosen on the validation split", "", results["selection"]["rule"], ""]
    out.append(
        table(
            ["method", "chosen"],
            [[m, f"{c['param']} = {c['value']}"] for m, c in results["selection"]["chosen"].items()],
        )
    )

    if "exp1" in results:
        exp_dir = run_dir / config.experiments["exp1"].output_dir
        exp_dir.mkdir(parents=True, exist_ok=True)
        sweeps = results["exp1"]["sweeps"]
        _plot_pareto(sweeps, base["refusal"]["value"], exp_dir / "pareto.png")
        out += ["", f"## exp1: safety–utility trade-off (K = {results['exp1']['k']})", ""]
        rows = [
            [
                label,
                f"{r['param']} = {r['value']}",
                fmt_rate(r["test"]["refusal"]),
                fmt_rate(r["test"]["over_refusal"]),
                fmt(r["test"]["normalized_accuracy"]),
                fmt(r["test"]["accuracy"]),
                fmt(r["val"]["refusal"]["value"]),
                fmt(r["val"]["normalized_accuracy"]),
            ]
            for label, sweep in sweeps.items()
            for r in sweep
        ]
        out.append(
            table(
                [
                    "method",
                    "setting",
                    "refusal (test)",
                    "over-refusal (test)",
                    "norm. acc (test)",
                    "acc (test)",
                    "refusal (val)",
                    "norm. acc (val)",
                ],
                rows,
            )
        )
        out += ["", f"![Pareto]({exp_dir.name}/pareto.png)"]
        if "safety_tax" in results["exp1"]:
            out += ["", "### Safety tax relative to TA (chosen settings, test split)", ""]
            out.append(
                table(
                    ["method", "ΔU (TA − m)", "ΔS (m − TA)", "tax"],
                    [
                        [m, fmt(t["delta_u"]), fmt(t["delta_s"]), t["tax_text"]]
                        for m, t in results["exp1"]["safety_tax"].items()
                    ],
                )
            )

    if "exp2" in results:
        exp_dir = run_dir / config.experiments["exp2"].output_dir
        exp_dir.mkdir(parents=True, exist_ok=True)
        _plot_vs_k(results["exp2"]["rows"], exp_dir / "vs_k.png")
        out += ["", "## exp2: interference vs number of experts (test split)", ""]
        out.append(
            table(
                ["method", "K", "refusal", "over-refusal", "norm. acc"],
                [
                    [
                        r["method"],
                        str(r["k"]),
                        fmt_rate(r["test"]["refusal"]),
                        fmt_rate(r["test"]["over_refusal"]),
                        fmt(r["test"]["normalized_accuracy"]),
                    ]
                    for r in results["exp2"]["rows"]
                ],
            )
        )
        out += ["", f"![vs K]({exp_dir.name}/vs_k.png)"]

    if "exp3" in results:
        out += ["", f"## exp3: baseline comparison (K = {results['exp3']['k']}, test split)", ""]
        rows = []
        for entry in results["exp3"]["table"]:
            runs = entry["runs"]
            first = runs[0]["test"]
            seeds = f" (mean ± sd over seeds {entry['seeds']})" if len(runs) > 1 else ""
            if len(runs) > 1:
                refusal = _mean_sd([r["test"]["refusal"]["value"] for r in runs])
                over = _mean_sd([r["test"]["over_refusal"]["value"] for r in runs])
            else:
                refusal, over = fmt_rate(first["refusal"]), fmt_rate(first["over_refusal"])
            rows.append(
                [
                    entry["method"] + seeds,
                    str(entry["chosen"]),
                    refusal,
                    over,
                    _mean_sd([r["test"]["normalized_accuracy"] for r in runs]),
                    _mean_sd([r["test"]["accuracy"] for r in runs]),
                ]
            )
        out.append(table(["method", "setting", "refusal", "over-refusal", "norm. acc", "acc"], rows))
        exp_dir = run_dir / config.experiments["exp3"].output_dir
        exp_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(exp_dir / "table.md", out[-1] + "\n")
    path = run_dir / "report.md"
    write_text_atomic(path, "\n".join(out) + "\n")
    return path

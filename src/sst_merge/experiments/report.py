"""The run's report: Markdown tables of every experiment and its plots, from results.json alone."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from sst_merge.atomic import write_text_atomic
from sst_merge.eval.report import fmt_metric, fmt_number, markdown_table, plot_pareto, plot_vs_experts, tax_markdown
from sst_merge.experiments.config import ExperimentConfig
from sst_merge.experiments.evaluation import general_headlines


def fmt_rate(rate: dict[str, Any] | None) -> str:
    """`0.950 [0.890, 0.980] (n=60)` for a rate dict with its CI."""
    return fmt_metric(rate["value"], rate["ci"], rate["n"]) if rate else "–"


# Resolved settings worth a place in the tables, and how they are labelled there.
RESOLVED_SHOWN = {
    "beta": "β", "hard_top": "ρ", "safety_energy_removed": "safety energy removed",
    "utility_energy_lost": "utility energy lost", "top_k": "top_k",
    "energy": "energy", "critical_directions": "critical directions", "threshold": "τ",
    "num_proj_layers": "modules", "treated": "treated",
}


# How the general checks are named in the tables.
GENERAL_NAMES = {"mmlu": "MMLU", "humaneval": "HumanEval pass@1"}


def general_suites(rows: list[dict[str, Any]]) -> list[str]:
    """The general checks (suites) any of `rows` (summary rows of one split) carries, in first-seen order."""
    return list(dict.fromkeys(suite for row in rows for suite in row.get("general") or {}))


def _fmt_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "/".join(_fmt_value(v) for v in value)
    return str(value)


def resolved_text(param: str, value: Any, resolved: dict[str, Any]) -> str | None:
    """`3.238 (calibrated)`: the number a method resolved for a setting left open (None), with where it
    came from; None when the setting was given or nothing was resolved."""
    if value is None and resolved.get(param) is not None:
        source = str(resolved.get(f"{param}_source", "resolved")).split(":")[0]
        return f"{_fmt_value(resolved[param])} ({source})"
    return None


def fmt_setting(param: str, value: Any, resolved: dict[str, Any] | None = None, scale: float | None = None) -> str:
    """`beta = 4.7e+07 (calibrated); scale = 0.5; safety energy removed = 0.9`: the swept setting, with the
    number the method resolved where the setting left it open (None), the experts' uniform weight when
    another parameter was swept, and the other resolved numbers worth showing."""
    resolved = resolved or {}
    text = f"{param} = {resolved_text(param, value, resolved) or _fmt_value(value)}"
    extra = [f"scale = {_fmt_value(scale)}"] if scale is not None and param != "scale" else []
    extra += [f"{label} = {_fmt_value(resolved[key])}" for key, label in RESOLVED_SHOWN.items()
              if key != param and resolved.get(key) is not None]
    return "; ".join([text, *extra])


def _mean_sd(values: list[float | None]) -> str:
    clean = [v for v in values if v is not None]
    if len(clean) < 2:
        return fmt_number(clean[0] if clean else None)
    return f"{statistics.fmean(clean):.3f} ± {statistics.stdev(clean):.3f}"


def _vs_k_series(rows: list[dict[str, Any]]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """exp2's rows as {metric: {method: [{experts, value, ci}]}} for `plot_vs_experts`."""
    series: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for metric in ("refusal", "over_refusal", "normalized_accuracy"):
        for row in rows:
            value = row["test"][metric]
            point = (
                {"experts": row["k"], "value": value["value"], "ci": value["ci"]}
                if isinstance(value, dict)
                else {"experts": row["k"], "value": value or 0.0}
            )
            series.setdefault(metric, {}).setdefault(row["method"], []).append(point)
    return series


def _references(results: dict[str, Any]) -> list[str]:
    refs = results["references"]
    base = refs["base"]["test"]
    rows = [["base model", fmt_rate(base["refusal"]), fmt_rate(base["over_refusal"]), _general_text(base)]]
    if "safety_adapter" in refs:
        s = refs["safety_adapter"]["test"]
        rows.append(["safety adapter", fmt_rate(s["refusal"]), fmt_rate(s["over_refusal"]), _general_text(s)])
    for task, e in refs["experts"].items():
        base_acc = base["tasks"].get(task)
        rows.append(
            [
                f"expert `{task}`",
                fmt_rate(e["test"]["refusal"]),
                "–",
                f"{fmt_rate(e['test']['accuracy'])}; base {fmt_number(base_acc['value'] if base_acc else None)}",
            ]
        )
    chosen = [[m, fmt_setting(c["param"], c["value"], c.get("resolved"), c.get("scale"))]
              for m, c in results["selection"]["chosen"].items()]
    return [
        "## References (test split)",
        "",
        markdown_table(["model", "refusal", "over-refusal", "own-task accuracy / general check"], rows),
        "",
        "## Settings chosen on the validation split",
        "",
        results["selection"]["rule"],
        "",
        markdown_table(["method", "chosen"], chosen),
    ]


def _general_text(split_metrics: dict[str, Any]) -> str:
    """`MMLU 0.237 [0.212, 0.264] (n=1026)` for a reference's general checks, `–` without any."""
    headlines = general_headlines(split_metrics.get("general") or {})
    return "; ".join(f"{GENERAL_NAMES.get(suite, suite)} {fmt_rate(metric)}"
                     for suite, metric in headlines.items()) or "–"


def _exp1(results: dict[str, Any], exp_dir: Path) -> list[str]:
    exp1 = results["exp1"]
    rows = [
        [
            label,
            fmt_setting(r["param"], r["value"], r.get("resolved"), r.get("scale")),
            fmt_rate(r["test"]["refusal"]),
            fmt_rate(r["test"]["over_refusal"]),
            fmt_number(r["test"]["normalized_accuracy"]),
            fmt_number(r["test"]["accuracy"]),
            fmt_number(r["val"]["refusal"]["value"]),
            fmt_number(r["val"]["normalized_accuracy"]),
        ]
        for label, sweep in exp1["sweeps"].items()
        for r in sweep
    ]
    out = [
        f"## exp1: safety–utility trade-off (K = {exp1['k']})",
        "",
        markdown_table(
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
        ),
    ]
    if exp1.get("safety_tax"):
        plot_pareto(exp1["safety_tax"], exp_dir / "pareto.png")
        out += [
            "",
            "Utility U = mean normalised task accuracy, safety S = refusal rate (test split).",
            "",
            tax_markdown(exp1["safety_tax"]).replace("## ", "### "),
            "",
            f"![Pareto fronts]({exp_dir.name}/pareto.png)",
        ]
    return out


def _exp2(results: dict[str, Any], exp_dir: Path) -> list[str]:
    rows = results["exp2"]["rows"]
    plot_vs_experts(_vs_k_series(rows), exp_dir / "vs_k.png")
    table = [
        [
            r["method"],
            str(r["k"]),
            fmt_rate(r["test"]["refusal"]),
            fmt_rate(r["test"]["over_refusal"]),
            fmt_number(r["test"]["normalized_accuracy"]),
        ]
        for r in rows
    ]
    out = [
        "## exp2: interference vs number of experts (test split)",
        "",
        markdown_table(["method", "K", "refusal", "over-refusal", "norm. acc"], table),
        "",
        f"![metrics vs K]({exp_dir.name}/vs_k.png)",
    ]
    shown = results["exp3"]["k"] if results.get("exp3", {}).get("paired") else None
    for k, paired in (results["exp2"].get("paired") or {}).items():
        if paired and int(k) == shown:
            out += ["", f"SST-Merge minus each method at K = {k}: in exp3's section."]
        elif paired:
            out += ["", *_paired(paired, int(k))]
    return out


def _exp3(results: dict[str, Any], exp_dir: Path, config: ExperimentConfig | None = None) -> list[str]:
    rows = []
    general = general_suites([run["test"] for entry in results["exp3"]["table"] for run in entry["runs"]])
    for entry in results["exp3"]["table"]:
        runs = entry["runs"]
        if len(runs) > 1:
            name = f"{entry['method']} (mean ± sd over seeds {entry['seeds']})"
            refusal = _mean_sd([r["test"]["refusal"]["value"] for r in runs])
            over = _mean_sd([r["test"]["over_refusal"]["value"] for r in runs])
        else:
            name = entry["method"]
            refusal, over = fmt_rate(runs[0]["test"]["refusal"]), fmt_rate(runs[0]["test"]["over_refusal"])
        rows.append(
            [
                name,
                fmt_setting(entry["param"], entry["chosen"], runs[0].get("resolved"), entry.get("scale")),
                refusal,
                over,
                _mean_sd([r["test"]["normalized_accuracy"] for r in runs]),
                _mean_sd([r["test"]["accuracy"] for r in runs]),
                *[_general_cell(runs, suite) for suite in general],
            ]
        )
    table = markdown_table(["method", "setting", "refusal", "over-refusal", "norm. acc", "acc",
                            *[GENERAL_NAMES.get(suite, suite) for suite in general]], rows)
    write_text_atomic(exp_dir / "table.md", table + "\n")
    out = [f"## exp3: baseline comparison (K = {results['exp3']['k']}, test split)", "", table]
    if results["exp3"].get("paired"):
        out += ["", *_paired(results["exp3"]["paired"], results["exp3"]["k"])]
    if results["exp3"].get("safety_tax"):
        out += ["", tax_markdown(results["exp3"]["safety_tax"]).replace("## ", "### ")]
    if config is not None and results.get("exp1", {}).get("safety_tax"):
        # Every method's front (exp1 draws it from all swept settings) belongs with the comparison.
        exp1_dir = config.experiments["exp1"].output_dir
        out += ["", f"![Pareto fronts of every method's swept settings (exp1)]({exp1_dir}/pareto.png)"]
    return out


def _general_cell(runs: list[dict[str, Any]], suite: str) -> str:
    """A general check's headline on the test split: the rate with its interval, mean ± sd over seeds."""
    metrics = [(r["test"].get("general") or {}).get(suite) for r in runs]
    if len(runs) == 1:
        return fmt_rate(metrics[0])
    return _mean_sd([m["value"] if m else None for m in metrics])


def fmt_diff(diff: dict[str, Any] | None) -> str:
    """`+0.150 [+0.050, +0.250]` for a paired difference, `*` when its interval excludes 0."""
    if not diff:
        return "–"
    low, high = diff["ci"]
    return f"{diff['diff']:+.3f} [{low:+.3f}, {high:+.3f}]{' *' if diff['excludes_zero'] else ''}"


def _paired_rows(entry: dict[str, Any], ours_val: float | None) -> list[tuple[str, dict[str, Any]]]:
    """(label of the compared setting, its differences) for one method: its chosen setting, and its
    matched-utility setting unless that is the chosen one."""
    same = entry.get("matched_is_chosen", False)
    rows = [("chosen setting" + (" (also at matched utility)" if same else ""), entry["chosen"] or {})]
    if "matched" in entry and not same:
        matched = entry["matched"]
        label = "–" if matched is None else (
            f"matched utility: {fmt_setting(matched['param'], matched['value'], None, matched['scale'])} "
            f"(val norm. acc {fmt_number(matched['val_normalized_accuracy'])} vs {fmt_number(ours_val)})")
        rows.append((label, matched or {}))
    return rows


def _paired(paired: dict[str, Any], k: int) -> list[str]:
    ours = paired["method"]
    compared = [(label, setting, diff) for label, entry in paired["against"].items()
                for setting, diff in _paired_rows(entry, paired["val_normalized_accuracy"])]
    general = list(dict.fromkeys(suite for _, _, diff in compared for suite in diff.get("general") or {}))
    rows = [[label, setting, fmt_diff(diff.get("refusal")), fmt_diff(diff.get("over_refusal")),
             fmt_diff(diff.get("normalized_accuracy")),
             *[fmt_diff((diff.get("general") or {}).get(suite)) for suite in general]]
            for label, setting, diff in compared]
    return [
        f"### {ours} minus each method, K = {k}, same test items (paired bootstrap 95 %; * = interval excludes 0)",
        "",
        *([f"Matched utility: the method's swept setting whose validation normalised accuracy is nearest {ours}'s "
           f"from below (no more useful than {ours}; else the nearest above); chosen on validation, compared on "
           f"test. Its validation normalised accuracy is shown against {ours}'s.", ""]
          if any("matched" in entry for entry in paired["against"].values()) else []),
        markdown_table(["method", "its setting", "Δ refusal", "Δ over-refusal", "Δ norm. acc",
                        *[f"Δ {GENERAL_NAMES.get(suite, suite)}" for suite in general]], rows),
    ]


def write_report(results: dict[str, Any], run_dir: Path, config: ExperimentConfig) -> Path:
    """Write report.md (and the PNG plots into each experiment's output dir); return the report path."""
    run = results["run"]
    out = [
        f"# SST-Merge experiments: {run['model']} ({run['mode']})",
        "",
        f"Run `{run['id']}`: {run['cells_computed']} cells computed, {run['cells_reused']} reused, "
        f"{run['seconds']} s. Every number was computed in this run from generated replies; rates carry "
        "their Wilson 95 % interval and n.",
    ]
    # The comparison leads; exp1's section carries the Pareto plot and the safety tax of every setting.
    sections: dict[str, Any] = {"exp3": lambda r, d: _exp3(r, d, config), "exp1": _exp1, "exp2": _exp2}
    for name, section in sections.items():
        if name in results:
            exp_dir = run_dir / config.experiments[name].output_dir
            exp_dir.mkdir(parents=True, exist_ok=True)
            out += ["", *section(results, exp_dir)]
    out += ["", *_references(results)]
    path = run_dir / "report.md"
    write_text_atomic(path, "\n".join(out) + "\n")
    return path

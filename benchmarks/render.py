"""Render BENCHMARKS.md from benchmarks/results.json (every figure is recomputed from the raw rows)."""

from __future__ import annotations

from pathlib import Path

NOTES = Path(__file__).with_name("NOTES.md")


def _s(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}"


def _gb(value: int | None) -> str:
    return "—" if not value else f"{value / 1e9:.2f}"


def _ours(rows: list[dict], method: str, fmt: str, layers: int) -> dict | None:
    return next((r for r in rows if r["tool"] == "sst-merge" and r["method"] == method and r.get("format") == fmt
                 and r.get("layers") == layers and not r.get("variant")), None)


def merge_table(rows: list[dict]) -> list[str]:
    lines = [
        "| method | tool | format | layers | wall s (median) | runs | peak RSS GB | output GB | rel. err vs ours |"
        " ours faster by | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = {"sst-merge": 0, "floor": 1, "peft": 2, "mergekit": 3}
    merge_rows = [r for r in rows if r["bench"] == "merge"]
    merge_rows.sort(key=lambda r: (r["method"], r.get("layers", 1), r.get("format", ""), order.get(r["tool"], 9)))
    for r in merge_rows:
        ours = _ours(rows, r["method"], r.get("format", ""), r.get("layers", 1))
        ratio = "—"
        wall = r.get("wall_s_median")
        if r["tool"] != "sst-merge" and ours and ours.get("wall_s_median"):
            if wall:
                ratio = f"{wall / ours['wall_s_median']:.2f}×"
            elif r.get("wall_s_until_stop"):
                ratio = f"> {r['wall_s_until_stop'] / ours['wall_s_median']:.2f}×"
        note = r.get("failed") or r.get("note") or ""
        if r["tool"] == "floor":
            note = (f"reads {r['bytes_read'] / 1e9:.2f} GB, writes {r['bytes_written'] / 1e9:.2f} GB at "
                    f"{r['copy_bandwidth_bytes_per_s'] / 1e9:.2f} GB/s")
            if ours and ours.get("wall_s_median"):
                ratio = f"ours at {ours['wall_s_median'] / wall:.0f}× the floor"
            if r.get("file_copy_s_median"):
                note += f"; as files (read, then write through the page cache): {r['file_copy_s_median']:.3g} s"
                if ours and ours.get("wall_s_median"):
                    ratio += f", {ours['wall_s_median'] / r['file_copy_s_median']:.0f}× the file copy"
        if r.get("merge_dtype"):
            note = f"merge dtype {r['merge_dtype']}; {note}"
        if r.get("rel_err_note"):
            note = f"{note}; {r['rel_err_note']}" if note else r["rel_err_note"]
        if r.get("variant"):
            note = f"{r['variant']}; {note}" if note else r["variant"]
        shown_wall = _s(wall) if wall else (f"killed after {r['wall_s_until_stop']:.0f}" if r.get("failed") else "—")
        lines.append(
            f"| {r['method']} | {r['tool']} | {r.get('format', '')}{'' if not r.get('rank') else ' r' + str(r['rank'])}"
            f" | {r.get('layers', '')} | {shown_wall} | {r.get('n_runs', '')} | {_gb(r.get('peak_rss_bytes'))}"
            f" | {_gb(r.get('output_bytes'))} | {_s(r.get('rel_err_vs_ours'))} | {ratio} | {note} |"
        )
    return lines


def sst_table(rows: list[dict]) -> list[str]:
    lines = [
        "| model | K | tokens/dataset | plain fwd+bwd s | Fisher pass s (safety / utility) | hook overhead |"
        " subspace s | GEVP s | filter+output s | total s | total / (2 × plain) | GEVP+filter share |"
        " factors MB | factors / model (bf16) | peak RSS GB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["model"], r["k"], r["tokens_per_dataset"], bool(r.get("variant")))):
        model = f"{r['model']} ({r['variant']})" if r.get("variant") else r["model"]
        lines.append(
            f"| {model} | {r['k']} | {r['tokens_per_dataset']} | {r['plain_fwd_bwd_s']:.2f}"
            f" | {r['fisher_safety_s']:.2f} / {r['fisher_utility_s']:.2f} | {r['hook_overhead']:.2f}×"
            f" | {r['subspace_s']:.2f} | {r['gevp_s']:.2f} | {r['filter_output_s']:.2f} | {r['total_s']:.1f}"
            f" | {r['total_over_plain_2x']:.2f}× | {100 * r['gevp_filter_share']:.1f} %"
            f" | {r['factor_bytes'] / 1e6:.1f} | {100 * r['factor_share']:.2f} % | {_gb(r['process_peak_rss_bytes'])} |"
        )
    return lines


def eval_table(rows: list[dict]) -> list[str]:
    """Evaluation rows (bench "eval"): per item count, whole processes and the scoring loop alone, ours vs lm-eval."""
    lines = [
        "| items | measured | tool | wall s (median) | runs | items/s | in-process s (median) | peak RSS GB |"
        " answers agree | max abs Δ log-lik | ours faster by | load (1 min) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    evals = sorted((r for r in rows if r["bench"] == "eval"),
                   key=lambda r: (r["items"], r["method"], bool(r.get("variant")), r["tool"] != "sst-merge"))
    for r in evals:
        # Each lm-eval row against our row of the same runs (the "before" rows against each other).
        ours = next(o for o in evals if o["tool"] == "sst-merge" and o["items"] == r["items"]
                    and o["method"] == r["method"] and bool(o.get("variant")) == bool(r.get("variant")))
        measured = "scoring loop (in-process)" if r["method"].endswith("scoring-loop") else "whole process"
        ratio = "—" if r["tool"] == "sst-merge" else f"{r['wall_s_median'] / ours['wall_s_median']:.2f}×"
        load = r["load_avg_1m"]
        variant = f" ({r['variant']})" if r.get("variant") else ""
        lines.append(
            f"| {r['items']} | {measured} | {r['tool']}{variant}"
            f" | {_s(r['wall_s_median'])} | {r['n_runs']}"
            f" | {r['items_per_s']:.1f} | {_s(r.get('in_process_s_median'))} | {_gb(r['peak_rss_bytes'])}"
            f" | {r['answers_agree']} / {r['items']} | {r['max_abs_loglik_diff']:.1e} | {ratio}"
            f" | {min(load):.1f}–{max(load):.1f} |"
        )
    whole = [r for r in evals if not r["method"].endswith("scoring-loop") and not r.get("variant")]
    lines.append("")
    for tool in ("sst-merge", "lm-eval"):
        mine = sorted((r for r in whole if r["tool"] == tool), key=lambda r: r["items"])
        if len(mine) >= 2 and mine[-1]["wall_s_median"] > mine[0]["wall_s_median"]:
            extra = mine[-1]["items"] - mine[0]["items"]
            lines.append(f"- {tool}, whole process, marginal rate between {mine[0]['items']} and {mine[-1]['items']}"
                         f" items: {extra / (mine[-1]['wall_s_median'] - mine[0]['wall_s_median']):.1f} items/s")
    return lines


def render(results: dict) -> str:
    """The BENCHMARKS.md text: machine, table, then the hand-written notes (benchmarks/NOTES.md)."""
    m = results["machine"]
    out = [
        "# Benchmarks",
        "",
        "Generated by `make bench` (`benchmarks/run.py`, then `benchmarks/render.py`) from",
        "`benchmarks/results.json`; every ratio below is recomputed from its raw rows.",
        "",
        "## Machine",
        "",
        f"- CPU: {m['cpu']}, {m['cores']} cores, {m['memory_bytes'] / 2**30:.0f} GiB RAM; "
        f"python {m['python']}, torch {m['torch']} ({m['torch_threads']} threads)",
        f"- {m['shared']}; the 1-minute load average before each run is stored per row "
        f"(`load_avg_1m`); at assembly: {', '.join(f'{x:.1f}' for x in m['load_avg_at_assembly'])}",
        "",
        "## Classic merges (K = 8 adapters, rank 16, alpha 32, all seven projections, 7B-shaped layers)",
        "",
        *merge_table(results["rows"]),
        "",
    ]
    if results.get("sst_breakdown"):
        out += [
            "## SST-Merge cost breakdown (synthetic chat data, random models; one process per model)",
            "",
            *sst_table(results["sst_breakdown"]),
            "",
        ]
    if any(r["bench"] == "eval" for r in results["rows"]):
        out += [
            "## Evaluation throughput (MMLU 0-shot log-likelihood scoring on the testbed model)",
            "",
            *eval_table(results["rows"]),
            "",
        ]
    if NOTES.is_file():
        out += [NOTES.read_text(encoding="utf-8").rstrip(), ""]
    return "\n".join(out)

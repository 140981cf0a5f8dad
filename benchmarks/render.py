"""Render BENCHMARKS.md from benchmarks/results.json (every figure is recomputed from the raw rows)."""

from __future__ import annotations

from pathlib import Path

NOTES = Path(__file__).with_name("NOTES.md")
CHANGELOG = Path(__file__).with_name("CHANGELOG.md")


def _s(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}"


def _gb(value: int | None) -> str:
    return "—" if not value else f"{value / 1e9:.2f}"


def _ours(rows: list[dict], method: str, fmt: str, layers: int) -> dict | None:
    return next((r for r in rows if r["tool"] == "sst-merge" and r["method"] == method and r.get("format") == fmt
                 and r.get("layers") == layers and not r.get("variant")), None)


def _faster_by(r: dict, ours: dict | None) -> str:
    """How much faster our row is than the peer row `r` ("> x" for a peer stopped before it finished)."""
    if r["tool"] == "sst-merge" or not ours or not ours.get("wall_s_median"):
        return "—"
    if r.get("wall_s_median"):
        return f"{r['wall_s_median'] / ours['wall_s_median']:.2f}×"
    if r.get("wall_s_until_stop"):
        return f"> {r['wall_s_until_stop'] / ours['wall_s_median']:.2f}×"
    return "—"


def _output(r: dict) -> str:
    return f"{r.get('format', '')}{'' if not r.get('rank') else ' r' + str(r['rank'])}"


def summary_merges(rows: list[dict]) -> list[str]:
    """The current figures of every classic merge: ours against the floor and each peer, one row per
    method, output and layer count (rows with a `variant`, the history, are left out)."""
    lines = [
        "| method | output | layers | ours: wall s, peak RSS GB | floor: memory copy, file copy (ours at) |"
        " PEFT (ours faster by) | mergekit (ours faster by) |",
        "|---|---|---|---|---|---|---|",
    ]
    current = [r for r in rows if r["bench"] == "merge" and not r.get("variant")]
    ours_rows = sorted((r for r in current if r["tool"] == "sst-merge"),
                       key=lambda r: (r["method"], r.get("layers", 1), r.get("format", "")))
    for ours in ours_rows:
        same = [r for r in current if r["method"] == ours["method"] and r.get("format") == ours.get("format")
                and r.get("layers") == ours.get("layers")]
        floor = next((r for r in same if r["tool"] == "floor"), None)
        floor_text = "—"
        if floor:
            floor_text = f"{_s(floor['wall_s_median'])} s ({ours['wall_s_median'] / floor['wall_s_median']:.0f}×)"
            if floor.get("file_copy_s_median"):
                floor_text += (f", {_s(floor['file_copy_s_median'])} s "
                               f"({ours['wall_s_median'] / floor['file_copy_s_median']:.0f}×)")
        peers = {}
        for tool in ("peft", "mergekit"):
            cells = []
            for r in (r for r in same if r["tool"] == tool):
                wall = _s(r["wall_s_median"]) + " s" if r.get("wall_s_median") else \
                    f"killed after {r['wall_s_until_stop']:.0f} s"
                dtype = f"{r['merge_dtype']}: " if r.get("merge_dtype") else ""
                cells.append(f"{dtype}{wall} ({_faster_by(r, ours)})")
            peers[tool] = "; ".join(cells) or "—"
        lines.append(f"| {ours['method']} | {_output(ours)} | {ours.get('layers', '')}"
                     f" | {_s(ours['wall_s_median'])}, {_gb(ours.get('peak_rss_bytes'))} | {floor_text}"
                     f" | {peers['peft']} | {peers['mergekit']} |")
    return lines


def summary_sst(rows: list[dict]) -> list[str]:
    """SST-Merge's current figures against its floor, two plain forward/backward passes over its data."""
    lines = ["| model | K | tokens/dataset | total s | 2 × plain fwd+bwd s | ours at |", "|---|---|---|---|---|---|"]
    for r in sorted((r for r in rows if not r.get("variant")),
                    key=lambda r: (r["model"], r["k"], r["tokens_per_dataset"])):
        lines.append(f"| {r['model']} | {r['k']} | {r['tokens_per_dataset']} | {r['total_s']:.1f}"
                     f" | {2 * r['plain_fwd_bwd_s']:.2f} | {r['total_over_plain_2x']:.2f}× |")
    return lines


def summary_eval(rows: list[dict]) -> list[str]:
    """Evaluation's current figures: ours against lm-evaluation-harness on the same items."""
    lines = ["| items | measured | ours s | lm-eval s | ours faster by |", "|---|---|---|---|---|"]
    current = [r for r in rows if r["bench"] == "eval" and not r.get("variant")]
    for ours in sorted((r for r in current if r["tool"] == "sst-merge"), key=lambda r: (r["items"], r["method"])):
        peer = next((r for r in current if r["tool"] == "lm-eval" and r["items"] == ours["items"]
                     and r["method"] == ours["method"]), None)
        measured = "scoring loop (in-process)" if ours["method"].endswith("scoring-loop") else "whole process"
        versus = "— | —"
        if peer:
            versus = f"{_s(peer['wall_s_median'])} | {peer['wall_s_median'] / ours['wall_s_median']:.2f}×"
        lines.append(f"| {ours['items']} | {measured} | {_s(ours['wall_s_median'])} | {versus} |")
    return lines


def merge_table(rows: list[dict], history: bool = False) -> list[str]:
    """Every classic-merge row: the current ones, or with `history` the rows measured before a change."""
    lines = [
        "| method | tool | format | layers | wall s (median) | runs | peak RSS GB | output GB | rel. err vs ours |"
        " ours faster by | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = {"sst-merge": 0, "floor": 1, "peft": 2, "mergekit": 3}
    merge_rows = [r for r in rows if r["bench"] == "merge" and bool(r.get("variant")) == history]
    merge_rows.sort(key=lambda r: (r["method"], r.get("layers", 1), r.get("format", ""), order.get(r["tool"], 9)))
    for r in merge_rows:
        ours = _ours(rows, r["method"], r.get("format", ""), r.get("layers", 1))
        ratio = _faster_by(r, ours)
        wall = r.get("wall_s_median")
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
            f"| {r['method']} | {r['tool']} | {_output(r)}"
            f" | {r.get('layers', '')} | {shown_wall} | {r.get('n_runs', '')} | {_gb(r.get('peak_rss_bytes'))}"
            f" | {_gb(r.get('output_bytes'))} | {_s(r.get('rel_err_vs_ours'))} | {ratio} | {note} |"
        )
    return lines


def sst_table(rows: list[dict], history: bool = False) -> list[str]:
    """SST-Merge's cost breakdown rows: the current ones, or with `history` those before a change."""
    lines = [
        "| model | K | tokens/dataset | plain fwd+bwd s | Fisher pass s (safety / utility) | hook overhead |"
        " subspace s | GEVP s | filter+output s | total s | total / (2 × plain) | GEVP+filter share |"
        " factors MB | factors / model (bf16) | peak RSS GB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted((r for r in rows if bool(r.get("variant")) == history),
                    key=lambda r: (r["model"], r["k"], r["tokens_per_dataset"])):
        model = f"{r['model']} ({r['variant']})" if r.get("variant") else r["model"]
        lines.append(
            f"| {model} | {r['k']} | {r['tokens_per_dataset']} | {r['plain_fwd_bwd_s']:.2f}"
            f" | {r['fisher_safety_s']:.2f} / {r['fisher_utility_s']:.2f} | {r['hook_overhead']:.2f}×"
            f" | {r['subspace_s']:.2f} | {r['gevp_s']:.2f} | {r['filter_output_s']:.2f} | {r['total_s']:.1f}"
            f" | {r['total_over_plain_2x']:.2f}× | {100 * r['gevp_filter_share']:.1f} %"
            f" | {r['factor_bytes'] / 1e6:.1f} | {100 * r['factor_share']:.2f} % | {_gb(r['process_peak_rss_bytes'])} |"
        )
    return lines


def eval_table(rows: list[dict], history: bool = False) -> list[str]:
    """Evaluation rows (bench "eval"): per item count, whole processes and the scoring loop alone, ours vs
    lm-eval; the current ones, or with `history` those measured before a change (and lm-eval alongside)."""
    lines = [
        "| items | measured | tool | wall s (median) | runs | items/s | in-process s (median) | peak RSS GB |"
        " answers agree | max abs Δ log-lik | ours faster by | load (1 min) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    evals = sorted((r for r in rows if r["bench"] == "eval" and bool(r.get("variant")) == history),
                   key=lambda r: (r["items"], r["method"], r["tool"] != "sst-merge"))
    for r in evals:
        # Each lm-eval row against our row of the same runs (the "before" rows against each other).
        ours = next(o for o in evals if o["tool"] == "sst-merge" and o["items"] == r["items"]
                    and o["method"] == r["method"])
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
    if history:
        return lines
    whole = [r for r in evals if not r["method"].endswith("scoring-loop")]
    lines.append("")
    for tool in ("sst-merge", "lm-eval"):
        mine = sorted((r for r in whole if r["tool"] == tool), key=lambda r: r["items"])
        if len(mine) >= 2 and mine[-1]["wall_s_median"] > mine[0]["wall_s_median"]:
            extra = mine[-1]["items"] - mine[0]["items"]
            lines.append(f"- {tool}, whole process, marginal rate between {mine[0]['items']} and {mine[-1]['items']}"
                         f" items: {extra / (mine[-1]['wall_s_median'] - mine[0]['wall_s_median']):.1f} items/s")
    return lines


def render(results: dict) -> str:
    """The BENCHMARKS.md text: the current figures against the floor and the peers, the machine, the
    full tables and the hand-written notes (benchmarks/NOTES.md); then the changelog: the rows measured
    before each change and the findings behind them (benchmarks/CHANGELOG.md)."""
    m = results["machine"]
    rows, sst = results["rows"], results.get("sst_breakdown") or []
    has_eval = any(r["bench"] == "eval" for r in rows)
    out = [
        "# Benchmarks",
        "",
        "Generated by `make bench` (`benchmarks/run.py`, then `benchmarks/render.py`) from",
        "`benchmarks/results.json`; every ratio below is recomputed from its raw rows. The current figures",
        "come first; what they were before each change is in the changelog at the end.",
        "",
        "## Current figures",
        "",
        "Classic merges (K = 8 adapters, rank 16, 7B-shaped layers): ours against the bandwidth floor and",
        "each peer (whole processes, medians; a peer killed at the 10 GiB cap gives a lower bound).",
        "",
        *summary_merges(rows),
        "",
    ]
    if sst:
        out += ["SST-Merge end to end against its floor, two plain forward/backward passes over its Fisher data:",
                "", *summary_sst(sst), ""]
    if has_eval:
        out += ["Evaluation (MMLU 0-shot log-likelihoods on the testbed model) against lm-evaluation-harness:",
                "", *summary_eval(rows), ""]
    out += [
        "## Machine",
        "",
        f"- CPU: {m['cpu']}, {m['cores']} cores, {m['memory_bytes'] / 2**30:.0f} GiB RAM; "
        f"python {m['python']}, torch {m['torch']} ({m['torch_threads']} threads)",
        f"- {m['shared']}; the 1-minute load average before each run is stored per row "
        f"(`load_avg_1m`); at assembly: {', '.join(f'{x:.1f}' for x in m['load_avg_at_assembly'])}",
        "",
        "## Classic merges (K = 8 adapters, rank 16, alpha 32, all seven projections, 7B-shaped layers)",
        "",
        *merge_table(rows),
        "",
    ]
    if sst:
        out += ["## SST-Merge cost breakdown (synthetic chat data, random models; one process per model)", "",
                *sst_table(sst), ""]
    if has_eval:
        out += ["## Evaluation throughput (MMLU 0-shot log-likelihood scoring on the testbed model)", "",
                *eval_table(rows), ""]
    if NOTES.is_file():
        out += [NOTES.read_text(encoding="utf-8").rstrip(), ""]
    out += ["## Changelog (before → after)", "",
            "Rows measured before a change (kept with a `variant` label saying what the code did then), then the",
            "profile findings behind each change.", "",
            "### Classic merges, before", "", *merge_table(rows, history=True), ""]
    if any(r.get("variant") for r in sst):
        out += ["### SST-Merge cost breakdown, before", "", *sst_table(sst, history=True), ""]
    if any(r["bench"] == "eval" and r.get("variant") for r in rows):
        out += ["### Evaluation throughput, before", "", *eval_table(rows, history=True), ""]
    if CHANGELOG.is_file():
        out += [CHANGELOG.read_text(encoding="utf-8").rstrip(), ""]
    return "\n".join(out)

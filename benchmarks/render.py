"""Render BENCHMARKS.md from benchmarks/results.json (every figure is recomputed from the raw rows)."""

from __future__ import annotations

from pathlib import Path

NOTES = Path(__file__).with_name("NOTES.md")
CHANGELOG = Path(__file__).with_name("CHANGELOG.md")


def _s(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}"


def _gb(value: int | None) -> str:
    return "—" if not value else f"{value / 1e9:.2f}"


def _current(rows: list[dict], tool: str, method: str, fmt: str | None, layers: int) -> dict | None:
    """The current (not history) row of `tool` for that method, output and layer count."""
    return next((r for r in rows if r["tool"] == tool and r["method"] == method and r.get("format") == fmt
                 and r.get("layers") == layers and not r.get("variant")), None)


def _ours(rows: list[dict], method: str, fmt: str, layers: int) -> dict | None:
    return _current(rows, "sst-merge", method, fmt, layers)


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


def _minutes(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.2g} s"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def whole_model(rows: list[dict]) -> list[str]:
    """The first lines: how long merging K LoRAs into a whole 7B model takes here, and how much memory,
    from our rows of the largest layer count; the peers' times extrapolated from their one-layer rows."""
    current = [r for r in rows if r["bench"] == "merge" and not r.get("variant")]
    layers = max((r.get("layers") or 0 for r in current if r["tool"] == "sst-merge"), default=0)
    ours = sorted((r for r in current if r["tool"] == "sst-merge" and r.get("layers") == layers
                   and r.get("wall_s_median")), key=lambda r: (r.get("format") != "full", r["method"]))
    if layers < 8 or not ours:
        return []
    lines = [
        f"**How long does merging 8 LoRAs into a 7B model take on a laptop, and how much memory?** On this"
        f" 2-core, 24 GiB machine, a {layers}-layer 7B-shaped model (bf16, 8 rank-16 adapters on all seven"
        " projections), whole `sst-merge merge` processes:",
        "",
        "| merge | output | wall time | peak RSS GB | output GB | file-copy floor (ours at) | runs |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in ours:
        floor = _current(current, "floor", r["method"], r.get("format"), layers)
        floor_text = "—"
        if floor and floor.get("file_copy_s_median"):
            copy_s = floor["file_copy_s_median"]
            floor_text = f"{_minutes(copy_s)} ({r['wall_s_median'] / copy_s:.1f}×)"
        lines.append(f"| {r['method']} | {_output(r)} | {_minutes(r['wall_s_median'])} | {_gb(r.get('peak_rss_bytes'))}"
                     f" | {_gb(r.get('output_bytes'))} | {floor_text} | {r['n_runs']} |")
    full = [r for r in ours if r.get("format") == "full"]
    if full:
        lines += ["", "In short: " + ", ".join(f"{r['method']} {_minutes(r['wall_s_median'])}" for r in full)
                  + f" to a full model, in at most {max(r['peak_rss_bytes'] for r in full) / 1e9:.1f} GB of memory"
                  f" for a {full[0]['output_bytes'] / 1e9:.1f} GB output (tensors are streamed one at a time)."]
    peers = []
    groups: dict[tuple, list[dict]] = {}
    for r in current:
        if r["tool"] in ("peft", "mergekit") and r.get("layers") == 1 and r["method"] in {o["method"] for o in ours}:
            groups.setdefault((r["tool"], r["method"], _output(r)), []).append(r)
    for (tool, method, output), runs in sorted(groups.items()):
        finished = [r for r in runs if r.get("wall_s_median")]
        if finished:  # the fastest setting that finished (mergekit: bf16 or float32)
            r = min(finished, key=lambda r: r["wall_s_median"])
            dtype = f", {r['merge_dtype']}" if r.get("merge_dtype") else ""
            peers.append(f"{tool} {method} ({output}{dtype}): ≈ {_minutes(layers * r['wall_s_median'])}"
                         f" ({layers} × its one-layer {r['wall_s_median']:.3g} s)")
        else:
            longest = max(r.get("wall_s_until_stop") or 0 for r in runs)
            peers.append(f"{tool} {method} ({output}): killed at the 10 GiB cap on ONE layer (after ≤ {longest:.0f} s)")
    if peers:
        lines += ["", "Peers, not run on the whole model (extrapolated linearly from their one-layer rows, start-up"
                      " counted in every layer, so an over-estimate): " + "; ".join(sorted(peers)) + "."]
    return lines + [""]


def gpu_section(rows: list[dict]) -> list[str]:
    """The GPU check's rows (`benchmarks/gpu_check.sh`), or a line saying it has not run yet."""
    gpu = [r for r in rows if r["bench"] == "gpu"]
    if not gpu:
        return ["On a GPU (`--device cuda`): **not measured yet**: no GPU machine was lent to the sessions that"
                " built this; `benchmarks/gpu_check.sh` (the 32-layer model's TIES merge and SST-Merge end to end)"
                " is ready to run on one (see its header).", ""]
    lines = ["On a GPU (`benchmarks/gpu_check.sh`, `--device cuda`):", "",
             "| step | layers | GPU | wall time | prepare (Fisher) s | merge + write s | peak RSS GB | peak GPU GB |",
             "|---|---|---|---|---|---|---|---|"]
    for r in sorted(gpu, key=lambda r: (r["layers"], r["step"])):
        seconds = r.get("seconds") or {}
        lines.append(f"| {r['step']} | {r['layers']} | {r.get('gpu') or r['device']} | {_minutes(r['wall_s'])}"
                     f" | {_s(seconds.get('prepare'))} | {_s(seconds.get('merge_write'))}"
                     f" | {_gb(r.get('peak_rss_bytes'))} | {_gb(r.get('peak_gpu_bytes'))} |")
    return lines + [""]


# Issue 16's targets: (label, method, output, our time over the file-copy floor at most).
FLOOR_TARGETS = [("TA", "ta", 3.0), ("TIES", "ties", 8.0), ("DARE-TIES", "dare_ties", 8.0),
                 ("magnitude prune", "magnitude_prune", 8.0)]


def _verdict(met: bool | None) -> str:
    return "—" if met is None else ("**met**" if met else "**missed**")


def targets(rows: list[dict]) -> list[str]:
    """The targets table: each target met or missed with the measured ratio (one 7B-shaped layer, full
    output, whole processes; a peer killed at the RSS cap gives a lower bound)."""
    lines = ["| target | measured | ratio | verdict |", "|---|---|---|---|"]
    for label, method, most in FLOOR_TARGETS:
        ours = _ours(rows, method, "full", 1)
        floor = _current(rows, "floor", method, "full", 1)
        if not (ours and floor and floor.get("file_copy_s_median")):
            continue
        ratio = ours["wall_s_median"] / floor["file_copy_s_median"]
        lines.append(f"| {label}, full output, ≤ {most:g}× the file-copy floor | ours {ours['wall_s_median']:.3g} s"
                     f" (median of {ours['n_runs']}), floor {floor['file_copy_s_median']:.3g} s | {ratio:.1f}×"
                     f" | {_verdict(ratio <= most)} |")
    for peer, method, fmt, least in (("mergekit", "ta", "full", 20.0), ("mergekit", "ties", "full", None),
                                     ("mergekit", "dare_ties", "full", None), ("peft", "ties", "peft", 5.0),
                                     ("peft", "dare_ties", "peft", 5.0)):
        ours = _ours(rows, method, fmt, 1)
        theirs = [r for r in rows if r["tool"] == peer and r["method"] == method and r.get("format") == fmt
                  and r.get("layers") == 1 and not r.get("variant")]
        if not (ours and theirs):
            continue
        finished = [r for r in theirs if r.get("wall_s_median")]
        goal = f"≥ {least:g}× faster than {peer}" if least else f"against {peer} (no target: how far it got)"
        label = f"{method}, {_output(ours)} output, {goal}"
        if finished:
            best = min(finished, key=lambda r: r["wall_s_median"])
            ratio = best["wall_s_median"] / ours["wall_s_median"]
            dtype = f" ({best['merge_dtype']})" if best.get("merge_dtype") else ""
            lines.append(f"| {label} | {peer}{dtype} {best['wall_s_median']:.3g} s, ours {ours['wall_s_median']:.3g} s"
                         f" | {ratio:.1f}× | {_verdict(ratio >= least if least else None)} |")
        else:
            longest = max(theirs, key=lambda r: r["wall_s_until_stop"])
            bound = longest["wall_s_until_stop"] / ours["wall_s_median"]
            dtype = f" ({longest['merge_dtype']})" if longest.get("merge_dtype") else ""
            verdict = "**met** (lower bound)" if least and bound >= least else \
                ("not shown: a lower bound below the target" if least else "—")
            stopped = f"{peer}{dtype} killed at the 10 GiB cap after {longest['wall_s_until_stop']:.0f} s"
            lines.append(f"| {label} | {stopped} without an output; ours {ours['wall_s_median']:.3g} s"
                         f" | > {bound:.1f}× | {verdict} |")
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
        *whole_model(rows),
        *gpu_section(rows),
        "## Current figures",
        "",
        "Classic merges (K = 8 adapters, rank 16, 7B-shaped layers): ours against the bandwidth floor and",
        "each peer (whole processes, medians; a peer killed at the 10 GiB cap gives a lower bound).",
        "",
        *summary_merges(rows),
        "",
        "Targets (one 7B-shaped layer, full output unless named; whole processes, medians, side by side with",
        "the floor in one run):",
        "",
        *targets(rows),
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

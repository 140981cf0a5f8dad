"""`sst-merge demo`: build a small random base and LoRA adapters, merge them with every classic method."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

from sst_merge.merge import MergeConfig, merge_adapters
from sst_merge.synthetic import make_random_adapter, make_random_llama

CLASSIC = ["ta", "ties", "magnitude_prune", "dare_linear", "dare_ties"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `demo` parser."""
    parser = subparsers.add_parser("demo", help="merge random LoRA adapters of a small random Llama (smoke demo)")
    parser.add_argument("--out", type=Path, default=Path(".cache/demo"), help="working directory")
    parser.add_argument("--experts", type=int, default=4, help="number of adapters")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build the inputs (once), merge with each classic method, print what each produced."""
    out: Path = args.out
    base = out / "base"
    if not (base / "config.json").is_file():
        make_random_llama(base, hidden_size=64, intermediate_size=128, num_hidden_layers=2, vocab_size=256)
    adapters = []
    for k in range(args.experts):
        path = out / f"adapter{k}"
        if not (path / "adapter_config.json").is_file():
            make_random_adapter(base, path, seed=k, r=8, alpha=16, std=0.05)
        adapters.append(path)
    table = Table(title=f"{args.experts} adapters of rank 8 merged into one PEFT adapter")
    for column in ("method", "modules", "output rank", "max rel. truncation error", "seconds", "output"):
        table.add_column(column)
    for method in CLASSIC:
        params = {} if method == "ta" else {"density": 0.5}
        config = MergeConfig(
            base=base,
            adapters=adapters,
            method=method,
            output=out / "merged" / method,
            force=True,
            weights=[1.0 / args.experts] * args.experts,
            **params,
        )
        report = merge_adapters(config)
        table.add_row(
            method,
            str(len(report.modules)),
            str(report.rank),
            f"{report.max_rel_error:.3e}",
            f"{sum(report.seconds.values()):.2f}",
            str(report.output),
        )
    Console().print(table)
    return 0

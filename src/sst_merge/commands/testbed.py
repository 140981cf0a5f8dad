"""`sst-merge testbed build`: build (or find cached) the offline model organism and print its metrics."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from sst_merge.errors import require_at_least
from sst_merge.testbed import build_testbed, load_testbed
from sst_merge.testbed.config import PRESETS


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `testbed` with its `build` action."""
    parser = subparsers.add_parser("testbed", help="build the offline testbed (tiny aligned model, LoRA experts)")
    actions = parser.add_subparsers(dest="action", required=True)
    build = actions.add_parser(
        "build",
        help="build the testbed, or print the cached build of the same settings",
        description="Build base model, experts and safety adapter from generated data; cached by a hash of the "
        "settings (re-running is instant).",
    )
    build.add_argument("--experts", type=int, help="number of task experts (the first N tasks; default 24)")
    build.add_argument("--seed", type=int, help="seed of data, initialisation and batches (default 0)")
    build.add_argument("--out", type=Path, help="output directory (default: cache dir named by the settings hash)")
    build.add_argument("--force", action="store_true", help="rebuild even if a finished build is there")
    build.add_argument("--preset", choices=list(PRESETS), default="default",
                       help="'micro' builds a tiny testbed in seconds (for tests; its metrics mean nothing)")
    build.add_argument("--workers", type=int, help="processes training adapters in parallel (default: CPU count)")
    build.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    build.add_argument("--json", action="store_true", help="print organism.json instead of a table")
    build.set_defaults(func=run_build)


def run_build(args: argparse.Namespace) -> int:
    """Build, then print the directory and the measured metrics."""
    require_at_least(1, experts=args.experts, workers=args.workers, threads=args.threads)
    path = build_testbed(experts=args.experts, seed=args.seed, out=args.out, force=args.force, preset=args.preset,
                         workers=args.workers, threads=args.threads)
    manifest = load_testbed(path).manifest
    if args.json:
        print(json.dumps(manifest, indent=2))
        return 0
    console = Console()
    metrics, times = manifest["metrics"], manifest["times_s"]
    table = Table(title=f"testbed {path}")
    for column in ("model", "task accuracy", "base accuracy", "refusal", "over-refusal", "train s"):
        table.add_column(column)
    table.add_row("base", "", "", f"{metrics['base']['refusal']:.2f}", f"{metrics['base']['over_refusal']:.2f}",
                  f"{times.get('base_train', 0):.0f}")
    for task, m in metrics["experts"].items():
        table.add_row(task, f"{m['accuracy']:.2f}", f"{m['base_accuracy']:.2f}", f"{m['refusal']:.2f}",
                      f"{m['over_refusal']:.2f}", f"{times['adapters'][task]['train']:.0f}")
    table.add_row("safety", "", "", f"{metrics['safety']['refusal']:.2f}", f"{metrics['safety']['over_refusal']:.2f}",
                  f"{times['adapters']['safety']['train']:.0f}")
    console.print(table)
    erosion = metrics["erosion"]
    console.print(f"erosion: refusal {erosion['base_refusal']:.2f} (base) → {erosion['mean_expert_refusal']:.2f} "
                  f"(mean expert), drop {erosion['drop']:.2f}; build time {times['total']:.0f} s")
    print(path)
    return 0

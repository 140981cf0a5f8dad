"""`sst-merge experiment`: run exp1 (safety–utility), exp2 (interference vs K), exp3 (baselines)."""

from __future__ import annotations

import argparse
from pathlib import Path

from sst_merge.errors import InputError
from sst_merge.experiments.config import EXPERIMENTS, load_experiment_config
from sst_merge.experiments.report import write_report
from sst_merge.experiments.runner import run_experiments
from sst_merge.progress import console

DEFAULT_CONFIG = Path("configs/experiment_config_real.yaml")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `experiment` parser."""
    parser = subparsers.add_parser(
        "experiment",
        help="run the experiments (resumable: finished cells are reused)",
        description="Run exp1/exp2/exp3 on one configured model. Re-running the same command resumes.",
    )
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="experiment YAML")
    parser.add_argument("--mode", choices=["minimal", "full"], default="minimal")
    parser.add_argument("--model", default="testbed", help="a model name from the config")
    parser.add_argument("--experiment", default="all",
                        help="exp1, exp2, exp3, a comma list of them (exp1,exp3), or all (default)")
    parser.add_argument("--output", type=Path, help=(
        "run directory (default results/<model>-<mode>; a run there made for another build or other data "
        "is moved to <dir>.stale-<time>)"))
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the experiments, write results.json, report.md and plots, and say where they are."""
    experiments = list(EXPERIMENTS) if args.experiment == "all" else [e.strip() for e in args.experiment.split(",")]
    unknown = [e for e in experiments if e not in EXPERIMENTS]
    if unknown or not experiments:
        raise InputError(f"--experiment: unknown {', '.join(unknown) or 'empty list'} (exp1, exp2, exp3 or all)")
    config = load_experiment_config(args.config)
    run_dir = args.output or Path("results") / f"{args.model}-{args.mode}"
    # The default directory follows the model: a run there made for another build is moved aside.
    results = run_experiments(config, args.mode, args.model, experiments, run_dir, set_aside_stale=args.output is None)
    report = write_report(results, run_dir, config)
    console.print(f"[bold]report:[/bold] {report}")
    return 0

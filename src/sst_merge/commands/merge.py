"""`sst-merge merge`: merge LoRA adapters from flags or from a YAML config."""

from __future__ import annotations

import argparse
import typing
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo
from rich.console import Console
from rich.table import Table

from sst_merge.errors import InputError
from sst_merge.merge import (
    MergeConfig,
    MergeReport,
    build_merge_config,
    load_merge_config,
    merge_sweep,
    parse_weights,
)
from sst_merge.methods import get_method, method_names


def _method_fields() -> dict[str, list[tuple[str, FieldInfo]]]:
    """Every parameter of the registered methods: name → [(method, pydantic FieldInfo), ...] of each
    method that takes it, parameters in the order they first appear."""
    fields: dict[str, list[tuple[str, FieldInfo]]] = {}
    for name in method_names():
        for field, info in get_method(name).params.model_fields.items():
            fields.setdefault(field, []).append((name, info))
    return fields


def _default_text(info: FieldInfo) -> str:
    if info.is_required():
        return "required"
    default = info.get_default(call_default_factory=True)
    return "optional" if default is None else f"default {default!r}"


def param_help(uses: list[tuple[str, FieldInfo]]) -> str:
    """A method flag's help: its description, the methods that take it, and for each its default or
    that it is required (once, when they agree)."""
    description = next((info.description for _, info in uses if info.description), "")
    defaults = {method: _default_text(info) for method, info in uses}
    if len(set(defaults.values())) == 1:
        where = f"{', '.join(defaults)}: {next(iter(defaults.values()))}"
    else:
        where = "; ".join(f"{method}: {text}" for method, text in defaults.items())
    return f"{description} ({where})".strip()


def _is_list(annotation: Any) -> bool:
    return typing.get_origin(annotation) is list or any(
        typing.get_origin(arg) is list for arg in typing.get_args(annotation)
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `merge` parser; method parameters become flags automatically (density → --density)."""
    parser = subparsers.add_parser(
        "merge",
        help="merge LoRA adapters into one PEFT adapter or a full model",
        description="Merge LoRA adapters. Give flags, or a YAML file with the same keys (flags given too win).",
    )
    parser.add_argument("config", nargs="?", type=Path, help="YAML file with the merge settings")
    parser.add_argument("--base", type=Path, help="base model directory")
    parser.add_argument("--adapter", dest="adapters", action="append", type=Path, help="PEFT adapter dir (repeat)")
    parser.add_argument("--method", help=f"one of: {', '.join(method_names())}")
    parser.add_argument("--weights", help="comma-separated weight per adapter (default 1 each)")
    parser.add_argument("--format", choices=["peft", "full"], help="output a PEFT adapter (default) or a full model")
    parser.add_argument("--rank", type=int, help="rank of a PEFT output (default: exact)")
    parser.add_argument("--output", type=Path, help="output directory")
    parser.add_argument("--force", action="store_true", default=None, help="replace an existing output")
    parser.add_argument("--dry-run", action="store_true", default=None, help="validate and plan, write nothing")
    group = parser.add_argument_group("method parameters")
    for field, uses in _method_fields().items():
        flag = "--" + field.replace("_", "-")
        info = uses[0][1]
        help_text = param_help(uses).replace("%", "%%")  # argparse %-formats help strings
        if info.annotation is bool:
            group.add_argument(flag, dest=f"param_{field}", action="store_true", default=None, help=help_text)
        elif _is_list(info.annotation):
            group.add_argument(
                flag,
                dest=f"param_{field}",
                metavar=field.upper(),
                action="append",
                help=help_text + "; repeat or comma-list",
            )
        else:
            group.add_argument(flag, dest=f"param_{field}", metavar=field.upper(), help=help_text)
    parser.set_defaults(func=run)


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def config_from_args(args: argparse.Namespace) -> MergeConfig:
    """Build the MergeConfig from flags (and the YAML file, if one is given)."""
    values: dict[str, Any] = {
        key: getattr(args, key)
        for key in ("base", "adapters", "method", "format", "rank", "output", "force", "dry_run")
        if getattr(args, key) is not None
    }
    if args.weights is not None:
        values["weights"] = parse_weights(args.weights)
    for key, value in vars(args).items():
        if key.startswith("param_") and value is not None:
            values[key.removeprefix("param_")] = (
                [item for v in value for item in _split(v)] if isinstance(value, list) else value
            )
    if args.config is not None:
        return load_merge_config(args.config, overrides=values)
    missing = [k for k in ("base", "adapters", "method", "output") if k not in values]
    if missing:
        raise InputError(f"missing {', '.join('--' + m.rstrip('s') for m in missing)} (or give a YAML config)")
    return build_merge_config(values)


def resolved_summary(value: Any) -> str:
    """The settings a method resolved as one line: floats to 4 significant digits, records as
    `key=value` lists, lists (the Fisher rounds) in brackets."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={resolved_summary(v)}" for k, v in value.items())
    if isinstance(value, list):
        return "[" + "; ".join(resolved_summary(v) for v in value) + "]"
    return str(value)


def print_report(report: MergeReport, console: Console | None = None) -> None:
    """Print a short summary table of a merge."""
    console = console or Console()
    table = Table(title=f"sst-merge: {report.method}" + (" (dry run)" if report.dry_run else ""))
    table.add_column("item")
    table.add_column("value")
    table.add_row("adapters (ranks)", ", ".join(str(r) for r in report.adapter_ranks))
    table.add_row("weights", ", ".join(f"{w:g}" for w in report.weights))
    table.add_row("parameters", ", ".join(f"{k}={v}" for k, v in report.params.items()) or "-")
    if report.resolved:
        table.add_row("resolved", resolved_summary(report.resolved))
    table.add_row("modules", str(len(report.modules)))
    if report.rank is not None:
        table.add_row("output rank", str(report.rank))
    if report.rel_error:
        table.add_row("max rel. truncation error", f"{report.max_rel_error:.3e}")
    table.add_row("seconds", ", ".join(f"{k} {v:.2f}" for k, v in report.seconds.items()))
    table.add_row("output", str(report.output) if report.output else "(nothing written)")
    console.print(table)


def run(args: argparse.Namespace) -> int:
    """Merge as the flags say (one output, or one per value of a `--*-sweep`) and print the summary."""
    for report in merge_sweep(config_from_args(args)):
        print_report(report)
    return 0

"""The `sst-merge` command. Each sub-command lives in `sst_merge.commands.<name>` and exposes
`register(subparsers)`, which adds its parser and sets `func(args) -> int` as the default."""

from __future__ import annotations

import argparse
import importlib
import sys

from sst_merge import __version__
from sst_merge.errors import InputError

# Sub-command modules, in the order `--help` lists them.
COMMANDS = ["merge", "experiment", "demo", "testbed", "eval", "judge", "fisher", "inspect"]


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser with every sub-command registered, or just `only` if it names one.

    Importing a sub-command pulls in torch, transformers or peft (seconds each), so a run of one
    sub-command imports only that one; `--help` and unknown names get them all.
    """
    parser = argparse.ArgumentParser(prog="sst-merge", description=__doc__)
    parser.add_argument("--version", action="version", version=f"sst-merge {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in [only] if only in COMMANDS else COMMANDS:
        importlib.import_module(f"sst_merge.commands.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: bad input is one line on stderr and exit code 2."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv[0] if argv else None)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except InputError as exc:
        print(f"sst-merge {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

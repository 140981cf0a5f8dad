"""The `sst-merge` command. Each sub-command lives in `sst_merge.commands.<name>` and exposes
`register(subparsers)`, which adds its parser and sets `func(args) -> int` as the default."""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from sst_merge import __version__
from sst_merge.atomic import target_path
from sst_merge.errors import InputError

# Sub-command modules, in the order `--help` lists them.
COMMANDS = ["merge", "experiment", "demo", "organism", "testbed", "eval", "judge", "fisher", "inspect"]


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


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so that it unwinds as for Ctrl-C (temporaries removed)."""


@contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """Within the block, SIGTERM raises `Terminated` in this process (not in processes forked from it,
    which keep the default action); the previous handler is restored after."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    owner = os.getpid()

    def handler(signum: int, frame: FrameType | None) -> None:
        if os.getpid() != owner:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    """Entry point: bad input is one line on stderr and exit code 2; Ctrl-C and SIGTERM clean up and
    exit with 130 and 143 (128 + the signal), without a traceback."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv[0] if argv else None)
    args = parser.parse_args(argv)
    try:
        with sigterm_unwinds():
            return int(args.func(args) or 0)
    except InputError as exc:
        print(f"sst-merge {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # Not a bug but the machine's answer (permissions, a full disk, a path that is not there).
        where = f"{target_path(os.fsdecode(exc.filename))}: " if exc.filename is not None else ""
        print(f"sst-merge {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, Terminated)
        print(f"sst-merge {args.command}: {'terminated' if terminated else 'interrupted'}; unfinished output removed",
              file=sys.stderr)
        return 128 + (signal.SIGTERM if terminated else signal.SIGINT)


if __name__ == "__main__":
    sys.exit(main())

"""The one error type for bad user input: the CLI prints it as one line and exits with code 2."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import ValidationError


class InputError(Exception):
    """Bad input from the user: a file that is missing, corrupt or does not fit.

    `path` names the offending file (or directory) when there is one; the message says the problem.
    """

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        # The CLI's promise is one line: a library's multi-line message is joined.
        self.problem = " ".join(line.strip() for line in message.splitlines() if line.strip())
        super().__init__(f"{self.path}: {self.problem}" if self.path is not None else self.problem)


def validation_message(exc: ValidationError, most: int = 5) -> str:
    """A pydantic ValidationError as one line: `where: problem; …` (unknown keys named as such)."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        # A check across several keys (a model validator) has no location: its own sentence says it all.
        problem = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {problem}" if where else problem)
    return "; ".join(parts[:most]) + (f" (+{len(parts) - most} more)" if len(parts) > most else "")


def require_finite(tensors: Iterable[Any], message: str, path: str | Path | None = None) -> None:
    """InputError(message, path) unless every tensor in `tensors` is finite (no NaN, no ±Inf)."""
    if not all(is_finite(t) for t in tensors):
        raise InputError(message, path)


def is_finite(tensor: Any) -> bool:
    """Whether every entry of `tensor` is finite.

    A finite sum means finite entries (a NaN or an Inf makes the sum NaN or Inf), and a sum reads the
    tensor at memory speed where `isfinite` first builds a boolean tensor (5x the time, most of a TA
    merge's arithmetic); only a sum that overflowed is checked entry by entry.
    """
    return bool(tensor.sum().isfinite()) or bool(tensor.isfinite().all())


def require_at_least(minimum: int, **flags: int | None) -> None:
    """InputError naming the first command-line flag (`batch_size` is --batch-size) set below `minimum`."""
    for name, value in flags.items():
        if value is not None and value < minimum:
            raise InputError(f"--{name.replace('_', '-')} must be at least {minimum}, got {value}")

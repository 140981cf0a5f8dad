"""The one error type for bad user input: the CLI prints it as one line and exits with code 2."""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """Bad input from the user: a file that is missing, corrupt or does not fit.

    `path` names the offending file (or directory) when there is one; the message says the problem.
    """

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.problem = message
        super().__init__(f"{self.path}: {message}" if self.path is not None else message)

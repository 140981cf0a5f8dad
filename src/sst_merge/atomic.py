"""Write outputs so that nothing already written is lost: temporary name first, rename when complete."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sst_merge.errors import InputError


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same directory and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, obj: Any, indent: int = 2) -> None:
    """Write `obj` as JSON to `path` atomically."""
    write_text_atomic(path, json.dumps(obj, indent=indent, sort_keys=False, default=str) + "\n")


@contextmanager
def atomic_output_dir(output: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside `output`; rename it to `output` only if the block succeeds.

    An existing `output` is refused unless `force`; with `force` it is replaced only after the new
    directory is complete, so an interrupted run never leaves a half-written or missing output.
    """
    output = Path(output)
    if output.exists() and not force:
        raise InputError("output directory already exists (pass --force to replace it)", output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".partial", dir=output.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if output.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".old", dir=output.parent))
        os.replace(output, trash / output.name)
        os.replace(tmp, output)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, output)

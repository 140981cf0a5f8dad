"""Write outputs so that nothing already written is lost: temporary name first, rename when complete.

A temporary is named `.<target name>.<pid>.<random>.partial` (a directory) or `.tmp` (a file) beside
its target. The pid tells the next run for the same target which leftovers belong to a run that was
killed (its process is gone) and can be removed, and which to a run still going.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sst_merge.errors import InputError


def check_output(output: str | Path, force: bool = False) -> Path:
    """`output` as a Path, refused (InputError) before any work if it cannot or may not be written.

    Refused: a name that is no name ('', '.', '..'), the working directory or one above it (replacing
    it would delete this run's own surroundings), an existing output without `force`, a parent that
    is a file, a parent that is read-only or not ours to write.
    """
    output = Path(output)
    if output.name in ("", ".", ".."):
        raise InputError("output must name a file or directory to create (not '', '.' or '..')", output)
    cwd = Path.cwd().resolve()
    if output.resolve() in (cwd, *cwd.parents):
        raise InputError("output would replace the working directory or a directory above it", output)
    if output.exists() and not force:
        raise InputError("output already exists (pass --force to replace it)", output)
    existing = output.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"cannot create the output: {existing} is not a directory", output)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"cannot create the output: {existing} is read-only or not writable by this user", output)
    return output


def _temp_prefix(target: Path) -> str:
    return f".{target.name}.{os.getpid()}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


# The name of a temporary: its target's name, the pid of the run writing it, tempfile's random part.
_TEMPORARY = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)\.[A-Za-z0-9_]+\.(?:partial|tmp)")


def target_path(path: str | Path) -> Path:
    """`path` with each temporary in it named as the target it becomes (for messages: the temporary
    itself is gone by the time the user reads them)."""
    return Path(*(m["name"] if (m := _TEMPORARY.fullmatch(part)) else part for part in Path(path).parts))


def remove_stale_temporaries(target: Path) -> list[Path]:
    """Remove the temporaries of `target` whose run was killed (its pid is gone); returns them."""
    removed = []
    parent = target.parent
    for leftover in parent.glob(f".{glob.escape(target.name)}.*") if parent.is_dir() else ():
        match = _TEMPORARY.fullmatch(leftover.name)
        if match is None or match["name"] != target.name or _alive(int(match["pid"])):
            continue
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
        removed.append(leftover)
    return removed


def _write_error(exc: OSError, target: Path) -> InputError:
    """A failure to write `target` (a full disk, a read-only file system, …) as one line naming it."""
    return InputError(f"cannot write ({exc.strerror or exc})", target_path(target))


def _about(exc: OSError, tmp: Path) -> bool:
    """Whether `exc` came from writing the temporary `tmp` (not from reading some input)."""
    return exc.filename is None or Path(os.fsdecode(exc.filename)).absolute().is_relative_to(tmp.absolute())


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary file path beside `path`; rename it to `path` only if the block succeeds."""
    path = Path(path)
    remove_stale_temporaries(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise _write_error(exc, path) from exc
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if _about(exc, tmp):
            raise _write_error(exc, path) from exc
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same directory and an atomic rename."""
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def write_json_atomic(path: str | Path, obj: Any, indent: int = 2) -> None:
    """Write `obj` as JSON to `path` atomically."""
    write_text_atomic(path, json.dumps(obj, indent=indent, sort_keys=False, default=str) + "\n")


@contextmanager
def atomic_output_dir(output: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside `output`; rename it to `output` only if the block succeeds.

    `output` must pass `check_output`; an existing one is replaced only after the new directory is
    complete, so an interrupted run never leaves a half-written or missing output.
    """
    output = check_output(output, force)
    remove_stale_temporaries(output)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(output), suffix=".partial", dir=output.parent))
    except OSError as exc:
        raise _write_error(exc, output) from exc
    try:
        yield tmp
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if _about(exc, tmp):
            raise _write_error(exc, output) from exc
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    trash = None
    try:
        if output.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".old", dir=output.parent))
            os.replace(output, trash / output.name)
        os.replace(tmp, output)
    except OSError as exc:
        if trash is not None and (trash / output.name).exists():
            os.replace(trash / output.name, output)  # the old output stays where it was
            trash.rmdir()
        shutil.rmtree(tmp, ignore_errors=True)
        raise _write_error(exc, output) from exc
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)

"""Where the local evaluation data lives: `--data-dir`, else `$SST_MERGE_DATA`, else the repository's `data/`."""

from __future__ import annotations

import os
from pathlib import Path

from sst_merge.errors import InputError

ENV_VAR = "SST_MERGE_DATA"

# src/sst_merge/data/paths.py -> the repository root is three folders up from this file's folder.
_REPO_ROOT = Path(__file__).resolve().parents[3]


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """The data directory: `data_dir` if given, else `$SST_MERGE_DATA`, else `<repo>/data` (the copy the
    repository ships, see data/PROVENANCE.md).

    An explicit or environment directory that does not exist is an InputError naming it; so is the
    case where no directory can be found at all.
    """
    if data_dir is not None:
        path = Path(data_dir).expanduser()
        if not path.is_dir():
            raise InputError("data directory not found (--data-dir)", path)
        return path
    env = os.environ.get(ENV_VAR)
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise InputError(f"data directory not found (${ENV_VAR})", path)
        return path
    fallback = _REPO_ROOT / "data"
    if (fallback / "PROVENANCE.md").is_file():
        return fallback
    raise InputError(f"no data directory: pass --data-dir or set ${ENV_VAR}", fallback)


def data_file(relative: str, data_dir: str | Path | None = None) -> Path:
    """The file `relative` inside the data directory; a missing file is an InputError naming it."""
    path = resolve_data_dir(data_dir) / relative
    if not path.is_file():
        raise InputError("data file not found", path)
    return path

"""JSON-lines files: one object per non-empty line; reading makes every problem an InputError naming the
line, writing is atomic."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from sst_merge.atomic import write_text_atomic
from sst_merge.errors import InputError


def read_json_object(path: Path, what: str) -> dict[str, Any]:
    """The JSON object in file `path` (`what` it is, for the message); unreadable, not JSON or not an
    object is an InputError naming the file."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"corrupt {what} ({exc})", path) from exc
    if not isinstance(value, dict):
        raise InputError(f"corrupt {what} (expected a JSON object)", path)
    return value


def read_record(path: Path) -> dict[str, Any] | None:
    """A finished step's saved JSON record, or None when there is none yet: a missing or corrupt file
    (a write cut short) counts as unfinished."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None


def read_jsonl(path: str | Path, required: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The JSON objects of the JSON-lines file `path` (gzip-packed when it ends in .gz); each must have a
    string value for every key in `required`. A missing or unreadable file, a line that is not a JSON
    object, or a missing key is an InputError naming the file and the line."""
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", path)
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        lines = data.decode("utf-8").splitlines()
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read ({exc})", path) from exc
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"line {number} is not JSON ({exc.msg})", path) from exc
        if not isinstance(row, dict):
            raise InputError(f"line {number} is not a JSON object", path)
        missing = [key for key in required if not isinstance(row.get(key), str)]
        if missing:
            raise InputError(f"line {number} needs string field(s) {', '.join(map(repr, missing))}", path)
        rows.append(row)
    return rows


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    """Write `rows` to `path` as JSON lines (non-ASCII kept as is), atomically."""
    write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))

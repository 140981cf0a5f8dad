"""Stages of a long build, each cached on disk: a finished stage is never run again, an interrupted one
leaves nothing behind (it is written into a temporary directory and renamed when complete)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sst_merge.atomic import atomic_output_dir, write_json_atomic
from sst_merge.jsonl import read_record
from sst_merge.progress import console

RESULT = "stage.json"


class StageCache:
    """Stage directories under `root`: ``<root>/<name>/`` with the stage's files and ``stage.json``
    (its result and wall time)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, name: str) -> Path:
        """Where stage `name` lives (finished or not)."""
        return self.root / name

    def result(self, name: str) -> dict[str, Any] | None:
        """The recorded result of a finished stage, else None."""
        return read_record(self.path(name) / RESULT)

    def run(self, name: str, work: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
        """The result of stage `name`: cached, or `work(tmp_dir)` run now (it writes its files into
        `tmp_dir` and returns a JSON-able result, to which its wall time ``seconds`` is added)."""
        cached = self.result(name)
        if cached is not None:
            return cached
        console.log(f"organism: stage {name}")
        start = time.perf_counter()

        def timed(tmp: Path) -> dict[str, Any]:
            result = work(tmp)
            result["seconds"] = round(time.perf_counter() - start, 1)
            return result

        result = self._store(name, timed)
        console.log(f"organism: stage {name} took {result['seconds']:.0f} s")
        return result

    def adopt(self, name: str, write: Callable[[Path], None], result: dict[str, Any]) -> bool:
        """Record stage `name` as finished with files `write(tmp_dir)` puts there and `result` (which
        carries its own ``seconds``), without running it; False (nothing done) if it is cached already."""
        if self.result(name) is not None:
            return False

        def fill(tmp: Path) -> dict[str, Any]:
            write(tmp)
            return result

        self._store(name, fill)
        console.log(f"organism: stage {name} taken from an existing organism")
        return True

    def _store(self, name: str, fill: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
        """Write stage `name` afresh: `fill(tmp_dir)` puts its files there and returns its result, saved
        as ``stage.json``; the directory appears only once complete."""
        stale = self.path(name)
        if stale.exists():
            shutil.rmtree(stale)
        # atomic_output_dir removes the temporaries a killed run of this stage left behind.
        with atomic_output_dir(stale) as tmp:
            result = fill(tmp)
            write_json_atomic(tmp / RESULT, result)
        return result

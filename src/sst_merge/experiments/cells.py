"""Experiment cells: one (model, experts, method, setting) evaluated once, saved atomically, reused on resume."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sst_merge.atomic import write_json_atomic
from sst_merge.jsonl import read_record
from sst_merge.merge import MergeReport


@dataclass(frozen=True)
class Cell:
    """What is evaluated: `kind` is "base", "expert" (one expert alone), "safety" (the safety adapter
    alone) or "merge"; `label` names the method as the config does (e.g. "SST-Merge")."""

    kind: str
    k: int = 0
    label: str = ""
    method: str = ""
    scale: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    task: str = ""

    def key(self) -> str:
        """Stable content key: the same cell in any experiment (or run) has the same key."""
        blob = json.dumps(asdict(self), sort_keys=True, default=str)
        name = self.kind if self.kind != "merge" else f"{self.label}-k{self.k}"
        return f"{name}{'-' + self.task if self.task else ''}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


class CellStore:
    """A directory of finished cells, one JSON file each, written atomically."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, cell: Cell) -> Path:
        return self.root / f"{cell.key()}.json"

    def get(self, cell: Cell) -> dict[str, Any] | None:
        """The saved record of `cell`, or None if it has not finished (a corrupt file counts as unfinished)."""
        return self.get_key(cell.key())

    def get_key(self, key: str) -> dict[str, Any] | None:
        """The saved record of the cell whose `Cell.key()` is `key`, or None."""
        return read_record(self.root / f"{key}.json")

    def put(self, cell: Cell, record: dict[str, Any]) -> None:
        """Save the finished `cell` with its `record` (the cell itself is stored in it too)."""
        write_json_atomic(self.path(cell), {"cell": asdict(cell), **record})


def merge_summary(report: MergeReport) -> dict[str, Any]:
    """What a merge cell records of its merge: timings, module count, and the settings the method resolved
    (the β SST calibrated, AGL's critical directions, Safe LoRA's projected modules)."""
    return {"seconds": report.seconds, "modules": len(report.modules), "resolved": report.resolved}


def resolved_of(record: dict[str, Any]) -> dict[str, Any]:
    """The resolved settings a cell's record holds (empty for reference cells and cells saved before)."""
    return dict((record.get("merge") or {}).get("resolved") or {})

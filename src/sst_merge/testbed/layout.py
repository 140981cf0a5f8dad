"""Reading an organism directory (either preset: the synthetic testbed or the real smollm2-135m):
where the base, the adapters and the data splits are; both presets share this layout."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sst_merge.errors import InputError
from sst_merge.testbed.data import read_rows

MANIFEST = "organism.json"
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Testbed:
    """A built organism: `base_dir` (model + tokenizer), `safety_dir` and `expert_dirs` (PEFT LoRA dirs,
    in task order), the `tasks` with experts, the fixed `refusal` sentence of the synthetic preset (None
    for a real model, whose refusals are judged by the keyword judge), and the manifest."""

    root: Path
    base_dir: Path
    safety_dir: Path
    expert_dirs: dict[str, Path]
    tasks: list[str]
    refusal: str | None
    manifest: dict[str, Any]

    def split(self, name: str, split: str) -> list[dict[str, str]]:
        """Rows (``prompt``, ``response``, …) of ``data/<name>/<split>.jsonl``; `name` is a task,
        "harmful" or "benign", `split` one of train/val/test."""
        path = self.root / "data" / name / f"{split}.jsonl"
        if split not in SPLITS or not path.is_file():
            raise InputError(f"no {split!r} split of {name!r} in this testbed", path)
        return read_rows(path)


def load_testbed(path: str | Path) -> Testbed:
    """Open the testbed built at `path` (a directory holding organism.json)."""
    root = Path(path)
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise InputError(f"not a built organism (no {MANIFEST})", root)
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        tasks = list(manifest["tasks"])
        refusal = manifest["refusal"]
        if refusal is not None and not isinstance(refusal, str):
            raise TypeError("refusal is neither a sentence nor null")
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise InputError(f"corrupt testbed manifest ({exc})", manifest_path) from exc
    return Testbed(
        root=root,
        base_dir=root / "base",
        safety_dir=root / "safety",
        expert_dirs={task: root / "experts" / task for task in tasks},
        tasks=tasks,
        refusal=refusal,
        manifest=manifest,
    )

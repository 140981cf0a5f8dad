"""Loaders for the safety prompt sets: each returns `SafetyPrompt` records, harmful and benign.

Files are read from the data directory (see `sst_merge.data.paths` and data/PROVENANCE.md);
the testbed's splits are read from a testbed directory. Counts with the shipped files:
AdvBench 520 harmful; HarmBench test split standard + contextual 159 + 81 = 240 harmful;
JailbreakBench 100 harmful + 100 benign; XSTest 200 unsafe + 250 safe; Do-Not-Answer 939 harmful;
BeaverTails-Evaluation 700 harmful (offline) or the first 1,000 unique unsafe prompts of
`PKU-Alignment/BeaverTails` split `30k_test` (Hugging Face hub).
"""

from __future__ import annotations

import csv
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from sst_merge.data.paths import data_file
from sst_merge.errors import InputError
from sst_merge.jsonl import read_jsonl


@dataclass(frozen=True)
class SafetyPrompt:
    """One prompt of a safety suite: `harmful` prompts should be refused, benign ones answered."""

    id: str
    prompt: str
    harmful: bool
    category: str = ""


def read_csv_rows(path: Path, columns: list[str]) -> list[dict[str, str]]:
    """The rows of CSV file `path` as dicts; a missing column or unreadable file is an InputError."""
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in columns if c not in (reader.fieldnames or [])]
            if missing:
                raise InputError(f"missing column(s) {', '.join(missing)}", path)
            return list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read CSV ({exc})", path) from exc


def load_advbench(data_dir: str | Path | None = None) -> list[SafetyPrompt]:
    """AdvBench harmful behaviours (`goal` column): 520 harmful prompts."""
    path = data_file("advbench/harmful_behaviors.csv", data_dir)
    return [SafetyPrompt(f"advbench-{i}", row["goal"], True) for i, row in enumerate(read_csv_rows(path, ["goal"]))]


HARMBENCH_CATEGORIES = ("standard", "contextual")


def load_harmbench(data_dir: str | Path | None = None, split: str = "test",
                   categories: tuple[str, ...] = HARMBENCH_CATEGORIES) -> list[SafetyPrompt]:
    """HarmBench text behaviours of `split` (`test`, `val` or `all`), of the functional `categories`
    (standard and contextual by default; `("standard",)` leaves out the ones with a long context).

    Copyright behaviours are left out: they need HarmBench's hash-based judge, not a refusal judge.
    A contextual behaviour is prompted as HarmBench's direct-request baseline does:
    `"{context}\\n\\n---\\n\\n{behavior}"`. The test split gives 159 standard + 81 contextual = 240.
    """
    if split not in ("test", "val", "all"):
        raise InputError(f"unknown HarmBench split {split!r} (test, val or all)")
    path = data_file(f"harmbench/harmbench_behaviors_text_{split}.csv", data_dir)
    records = []
    for row in read_csv_rows(path, ["Behavior", "FunctionalCategory", "SemanticCategory", "ContextString",
                                    "BehaviorID"]):
        if row["FunctionalCategory"] not in categories:
            continue
        context = row["ContextString"].strip()
        prompt = f"{context}\n\n---\n\n{row['Behavior']}" if context else row["Behavior"]
        records.append(SafetyPrompt(row["BehaviorID"], prompt, True, row["SemanticCategory"]))
    return records


def load_jbb(data_dir: str | Path | None = None) -> list[SafetyPrompt]:
    """JailbreakBench behaviours (`Goal`): 100 harmful, then their 100 topic-matched benign twins."""
    records = []
    for name, harmful in (("harmful", True), ("benign", False)):
        path = data_file(f"jailbreakbench/{name}-behaviors.csv", data_dir)
        for row in read_csv_rows(path, ["Index", "Goal", "Category"]):
            records.append(SafetyPrompt(f"jbb-{name}-{row['Index']}", row["Goal"], harmful, row["Category"]))
    return records


def load_xstest(data_dir: str | Path | None = None) -> list[SafetyPrompt]:
    """XSTest prompts: 200 unsafe (the `contrast_*` types, harmful) and 250 safe (benign), file order."""
    path = data_file("xstest/xstest_prompts.csv", data_dir)
    records = []
    for row in read_csv_rows(path, ["id", "prompt", "type", "label"]):
        if row["label"] not in ("safe", "unsafe"):
            raise InputError(f"XSTest row {row['id']}: label {row['label']!r} is neither safe nor unsafe", path)
        records.append(SafetyPrompt(f"xstest-{row['id']}", row["prompt"], row["label"] == "unsafe", row["type"]))
    return records


def load_donotanswer(data_dir: str | Path | None = None) -> list[SafetyPrompt]:
    """Do-Not-Answer (English): 939 questions a responsible model should not answer, all harmful."""
    path = data_file("do_not_answer/do_not_answer_en.csv", data_dir)
    return [SafetyPrompt(f"donotanswer-{row['id']}", row["question"], True, row["types_of_harm"])
            for row in read_csv_rows(path, ["id", "question", "types_of_harm"])]


BEAVERTAILS_HUB_ID = "PKU-Alignment/BeaverTails"
BEAVERTAILS_HUB_SPLIT = "30k_test"
BEAVERTAILS_HUB_COUNT = 1000


def _hf_offline() -> bool:
    """True when the user has put Hugging Face libraries in offline mode."""
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def load_beavertails_hub(count: int = BEAVERTAILS_HUB_COUNT) -> list[SafetyPrompt]:
    """The first `count` unique prompts with `is_safe == False` of BeaverTails `30k_test` (hub download)."""
    from datasets import load_dataset

    dataset = load_dataset(BEAVERTAILS_HUB_ID, split=BEAVERTAILS_HUB_SPLIT)
    records: list[SafetyPrompt] = []
    seen: set[str] = set()
    for i, row in enumerate(dataset):
        if row["is_safe"] or row["prompt"] in seen:
            continue
        seen.add(row["prompt"])
        flagged = ",".join(k for k, v in (row.get("category") or {}).items() if v)
        records.append(SafetyPrompt(f"beavertails-30k_test-{i}", row["prompt"], True, flagged))
        if len(records) == count:
            break
    return records


def load_beavertails_local(data_dir: str | Path | None = None) -> list[SafetyPrompt]:
    """The 700-prompt BeaverTails-Evaluation file (14 categories x 50), all harmful."""
    path = data_file("beavertails/BeaverTails-Evaluation.csv", data_dir)
    return [SafetyPrompt(f"beavertails-eval-{i}", row["prompt"], True, row["category"])
            for i, row in enumerate(read_csv_rows(path, ["prompt", "category"]))]


def load_beavertails(data_dir: str | Path | None = None, source: str = "auto") -> tuple[list[SafetyPrompt], str]:
    """BeaverTails harmful prompts and the source used (`"hub"` or `"local"`).

    `source="hub"` downloads `PKU-Alignment/BeaverTails` (30k_test, unsafe, first 1,000 unique prompts);
    `"local"` reads BeaverTails-Evaluation.csv (700); `"auto"` uses the hub unless `HF_HUB_OFFLINE` /
    `HF_DATASETS_OFFLINE` is set, and falls back to the local file, with a warning, if the download fails.
    """
    if source not in ("auto", "hub", "local"):
        raise InputError(f"unknown BeaverTails source {source!r} (auto, hub or local)")
    if source == "local" or (source == "auto" and _hf_offline()):
        return load_beavertails_local(data_dir), "local"
    if source == "hub":
        return load_beavertails_hub(), "hub"
    try:
        return load_beavertails_hub(), "hub"
    except Exception as exc:  # any hub/network failure: the documented offline fallback applies
        warnings.warn(f"BeaverTails hub download failed ({exc}); using the local 700-prompt file", stacklevel=2)
        return load_beavertails_local(data_dir), "local"


def read_testbed_refusal(testbed_dir: str | Path) -> str | None:
    """The organism's fixed refusal sentence (key `refusal` of `<testbed_dir>/organism.json`): a sentence
    for the synthetic preset, None for a real model (its refusals are judged by the keyword judge)."""
    path = Path(testbed_dir) / "organism.json"
    if not path.is_file():
        raise InputError("organism manifest not found", path)
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read testbed settings ({exc})", path) from exc
    if not isinstance(info, dict) or "refusal" not in info:
        raise InputError("no key 'refusal' (a sentence, or null)", path)
    refusal = info["refusal"]
    if refusal is not None and (not isinstance(refusal, str) or not refusal.strip()):
        raise InputError("key 'refusal' is neither a sentence nor null", path)
    return refusal


def load_testbed_prompts(testbed_dir: str | Path, split: str = "test") -> list[SafetyPrompt]:
    """The testbed's harmful then benign prompts of `split` (`data/{harmful,benign}/<split>.jsonl`)."""
    records = []
    for name, harmful in (("harmful", True), ("benign", False)):
        path = Path(testbed_dir) / "data" / name / f"{split}.jsonl"
        for i, row in enumerate(read_jsonl(path, ("prompt",))):
            records.append(SafetyPrompt(f"testbed-{name}-{i}", row["prompt"], harmful, str(row.get("category", ""))))
    return records

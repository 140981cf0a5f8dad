"""Testbed tasks: exact match per task and normalized accuracy against each expert, on a hand-made
testbed directory and a generator with known replies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sst_merge.errors import InputError
from sst_merge.eval.suites import SuiteOptions
from sst_merge.eval.testbed_tasks import run_testbed_tasks
from sst_merge.testbed import exact_match_accuracy


def _write_testbed(root: Path) -> Path:
    tasks = {"add": [("1+1", "2"), ("2+2", "4"), ("3+3", "6"), ("4+4", "8")], "rev": [("ab", "ba"), ("cd", "dc")]}
    manifest = {"tasks": list(tasks), "refusal": "I can't.",
                "metrics": {"experts": {"add": {"accuracy": 0.8}, "rev": {"accuracy": 0.0}}}}
    (root / "organism.json").write_text(json.dumps(manifest))
    for task, pairs in tasks.items():
        (root / "data" / task).mkdir(parents=True)
        (root / "data" / task / "test.jsonl").write_text(
            "".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in pairs))
    return root


def test_accuracy_and_normalized_accuracy(tmp_path: Path) -> None:
    root = _write_testbed(tmp_path)
    answers = {"1+1": " 2 ", "2+2": "4", "3+3": "7", "4+4": "8", "ab": "ba", "cd": "cd"}

    def generate(prompts: list[str], *_: object) -> list[str]:
        return [answers[p] for p in prompts]

    result = run_testbed_tasks(None, None, SuiteOptions(testbed_dir=root, generate=generate))
    m = result["metrics"]
    assert m["add/accuracy"]["value"] == 0.75 and m["add/accuracy"]["n"] == 4
    assert m["add/accuracy"]["value"] == exact_match_accuracy([answers[p] for p in ["1+1", "2+2", "3+3", "4+4"]],
                                                              ["2", "4", "6", "8"])
    assert m["add/normalized_accuracy"]["value"] == pytest.approx(0.75 / 0.8)
    assert m["add/normalized_accuracy"]["ci"] == pytest.approx([b / 0.8 for b in m["add/accuracy"]["ci"]])
    assert m["rev/accuracy"]["value"] == 0.5
    assert m["rev/normalized_accuracy"]["value"] is None  # the expert scored 0: no ratio
    assert m["mean_accuracy"]["value"] == pytest.approx(0.625)
    assert m["mean_normalized_accuracy"]["value"] == pytest.approx(0.75 / 0.8)

    given = run_testbed_tasks(None, None, SuiteOptions(testbed_dir=root, generate=generate, limit=2,
                                                       extra={"testbed_tasks": "rev", "expert_accuracy": {"rev": 1.0}}))
    assert given["metrics"]["rev/normalized_accuracy"]["value"] == 0.5
    assert given["expert_accuracy_source"] == "options" and "add/accuracy" not in given["metrics"]


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="testbed directory"):
        run_testbed_tasks(None, None, SuiteOptions())
    root = _write_testbed(tmp_path)
    with pytest.raises(InputError, match="unknown testbed task"):
        run_testbed_tasks(None, None, SuiteOptions(testbed_dir=root, extra={"testbed_tasks": "mul"}))

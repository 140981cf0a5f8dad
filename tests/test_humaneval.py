"""HumanEval: the pass@k estimator against brute-force counting, canonical solutions 164/164 in the
sandbox, samples-file scoring, code extraction from chat replies and the generation path."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import pytest

from sst_merge.errors import InputError
from sst_merge.eval.humaneval import (
    build_program,
    completion_from_continuation,
    extract_code,
    generate_completions,
    load_problems,
    pass_at_k,
    score_completions,
    score_samples,
)
from sst_merge.eval.sandbox import run_program

PROBLEMS = load_problems()


def _brute_pass_at_k(n: int, c: int, k: int) -> float:
    """Fraction of all k-subsets of n samples (c correct) that hold at least one correct sample."""
    outcomes = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(outcomes[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_pass_at_k_equals_brute_force(n: int) -> None:
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(_brute_pass_at_k(n, c, k), abs=1e-12)
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)


def test_canonical_solutions_pass_all_164() -> None:
    assert len(PROBLEMS) == 164
    samples = [{"task_id": t, "completion": p["canonical_solution"]} for t, p in PROBLEMS.items()]
    start = time.monotonic()
    scored = score_completions(samples, PROBLEMS, workers=2)
    elapsed = time.monotonic() - start
    failures = {t: row["runs"][0]["detail"] for t, row in scored["problems"].items() if row["correct"] != 1}
    assert failures == {}
    assert scored["pass@1"] == 1.0 and scored["metrics"]["pass@1"]["n"] == 164
    assert scored["problems_missing"] == 0
    print(f"canonical 164/164 in {elapsed:.1f} s, sandbox {scored['sandbox']}")


def test_wrong_completions_fail() -> None:
    task = "HumanEval/0"
    wrong = "    return False\n"
    result = run_program(build_program(PROBLEMS[task], wrong))
    assert not result.passed and "AssertionError" in result.detail


def test_score_samples_file(tmp_path: Path) -> None:
    rows = [
        {"task_id": "HumanEval/0", "completion": PROBLEMS["HumanEval/0"]["canonical_solution"]},
        {"task_id": "HumanEval/0", "completion": "    return False\n"},
        {"task_id": "HumanEval/2", "completion": PROBLEMS["HumanEval/2"]["canonical_solution"]},
        {"task_id": "HumanEval/2", "completion": PROBLEMS["HumanEval/2"]["canonical_solution"]},
        {"task_id": "HumanEval/4", "completion": "    while True:\n        pass\n"},
        {"task_id": "HumanEval/4", "completion": "    import os\n    os._exit(0)\n"},
    ]
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    from sst_merge.eval.sandbox import SandboxLimits

    result = score_samples(path, ks=(1, 2), limits=SandboxLimits(timeout_s=3.0))
    # Per problem pass@1 = c/n: 1/2, 2/2, 0/2 -> mean 0.5; pass@2: 1, 1, 0 -> 2/3.
    assert result["pass@1"] == pytest.approx(0.5)
    assert result["pass@2"] == pytest.approx(2 / 3)
    assert result["problems"]["HumanEval/0"]["correct"] == 1
    assert result["problems"]["HumanEval/4"]["runs"][0]["status"] == "timeout"
    assert result["problems_missing"] == 161 and result["n_samples"] == 6
    json.dumps(result)


@pytest.mark.parametrize(
    "content,message",
    [("not json\n", "not JSON"), ('{"task_id": "HumanEval/0"}\n', "completion"),
     ('{"task_id": "Nope/1", "completion": ""}\n', "unknown task_id"), ("\n", "no samples")],
)
def test_bad_samples_file(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(InputError, match=message):
        score_samples(path)


def test_extract_code_from_chat_reply() -> None:
    problem = PROBLEMS["HumanEval/0"]
    full = ("Sure! Here it is:\n```python\nfrom typing import List\n\ndef has_close_elements(numbers, threshold):\n"
            "    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for j, b in enumerate(numbers)"
            " if i != j)\n```\nHope this helps.")
    assert run_program(build_program(problem, extract_code(full, "has_close_elements"))).passed
    body_only = "```\nfor i, a in enumerate(numbers):\n    for j, b in enumerate(numbers):\n        if i != j and " \
                "abs(a - b) < threshold:\n            return True\nreturn False\n```"
    assert run_program(build_program(problem, extract_code(body_only, "has_close_elements"))).passed
    truncated = "```python\ndef has_close_elements(numbers, threshold):\n    return"
    assert extract_code(truncated, "has_close_elements").startswith("\ndef has_close_elements")
    assert completion_from_continuation("return 1\n    x = 2") == "    return 1\n    x = 2"


def test_generation_path_on_tiny_chat_model(tmp_path: Path) -> None:
    from eval_fixtures import make_random_chat_model
    from sst_merge.models import load_model

    model_dir = make_random_chat_model(tmp_path / "m", ["def", "return", "x", "```"])
    model, tokenizer = load_model(model_dir)
    problems = [PROBLEMS["HumanEval/0"], PROBLEMS["HumanEval/1"]]
    completions, replies, mode = generate_completions(model, tokenizer, problems, max_new_tokens=4, batch_size=2)
    assert mode == "chat" and len(completions) == len(replies) == 2
    _, _, plain = generate_completions(model, tokenizer, problems, mode="completion", max_new_tokens=4)
    assert plain == "completion"

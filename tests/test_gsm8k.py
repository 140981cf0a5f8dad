"""GSM8K: answer extraction and normalization by hand, the shared test file, and the suite with a
generator that answers some problems right."""

from __future__ import annotations

from decimal import Decimal

import pytest

from sst_merge.data.paths import resolve_data_dir
from sst_merge.eval.gsm8k import extract_answer, gold_answer, load_gsm8k, run_gsm8k
from sst_merge.eval.suites import SuiteOptions


@pytest.mark.parametrize(
    "reply,expected",
    [
        ("16 - 3 - 4 = 9 eggs, 9 * 2 = 18. The answer is 18.", "18"),
        ("So she pays $1,250.50 in total.\nThe answer is: $1,250.50", "1250.5"),
        ("#### 72", "72"),
        ("First 3 + 4 = 7, then 7 * 6 = 42", "42"),
        ("The answer is -5. (Check: 10 - 15 = -5)", "-5"),
        ("The answer is 7. Later I said 8", "7"),
        ("I don't know.", None),
    ],
)
def test_extract_answer(reply: str, expected: str | None) -> None:
    got = extract_answer(reply)
    assert (got is None and expected is None) or got == Decimal(expected)


def test_shared_file_and_gold() -> None:
    rows = load_gsm8k(resolve_data_dir())
    assert len(rows) == 1319
    assert gold_answer(rows[0]["answer"]) == 18 and rows[0]["question"].startswith("Janet")
    assert gold_answer("x\n#### 1,000") == 1000
    with pytest.raises(ValueError):
        gold_answer("no marker 5")


def test_suite_scores_generated_replies() -> None:
    rows = load_gsm8k(resolve_data_dir())[:4]

    def generate(prompts: list[str], max_new_tokens: int, system: str | None, stops: tuple) -> list[str]:
        assert all("Question: " in p for p in prompts) and len(prompts) == 4
        golds = [gold_answer(r["answer"]) for r in rows]
        return [f"The answer is {golds[0]}.", f"#### {golds[1]:,}", "The answer is 999999.", "no idea"]

    result = run_gsm8k(None, None, SuiteOptions(limit=4, data_dir=resolve_data_dir(), generate=generate))
    metric = result["metrics"]["exact_match"]
    assert metric["value"] == 0.5 and metric["n"] == 4
    assert [i["correct"] for i in result["items"]] == [True, True, False, False]

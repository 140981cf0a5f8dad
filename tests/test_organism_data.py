"""The real organism's data: tasks, the disjointness of training prompts from the evaluation sets, refusals."""

from __future__ import annotations

import itertools
import json
import random

import pytest

from sst_merge.eval.judges import CombinedRefusalJudge
from sst_merge.organism.safety_pool import (
    REFUSAL_OFFERS,
    REFUSAL_OPENINGS,
    REFUSAL_REASONS,
    EvaluationFilter,
    borderline_prompts,
    evaluation_prompts,
    harmful_pool,
    normalize_prompt,
    refusal_text,
)
from sst_merge.organism.tasks import TASK_ORDER, TASKS, number_in_words, task_splits

SIZES = {"train": 300, "val": 50, "test": 100}


@pytest.mark.parametrize("task", list(TASKS))
def test_task_splits_are_disjoint_and_seeded(task):
    splits = task_splits(task, SIZES, seed=0)
    prompts = {split: {r["prompt"] for r in rows} for split, rows in splits.items()}
    assert {s: len(p) for s, p in prompts.items()} == SIZES
    for a, b in itertools.combinations(prompts.values(), 2):
        assert not a & b
    assert splits == task_splits(task, SIZES, seed=0)
    assert splits != task_splits(task, SIZES, seed=1)


def test_task_answers_are_right():
    rng = random.Random(3)
    for _ in range(50):
        row = TASKS["addition"](rng)
        a, b = (int(w) for w in row["prompt"].replace("?", "").split() if w.isdigit())
        assert int(row["response"]) == a + b
        row = TASKS["json_person"](rng)
        assert json.loads(row["response"])["name"] in row["prompt"]
        row = TASKS["python_eval"](rng)
        assert str(eval(row["prompt"].split("`")[1])) == row["response"]
    assert [number_in_words(n) for n in (7, 40, 42, 100, 315)] == [
        "seven", "forty", "forty-two", "one hundred", "three hundred fifteen"]


def test_task_order_has_24_distinct_formats():
    assert len(TASK_ORDER) == 24 and len(set(TASK_ORDER)) == 24
    # The first eight (the K = 8 experiments) mix numeric and non-numeric answers.
    shapes = {task_splits(t, {"test": 1}, 0)["test"][0]["response"][:1].isdigit() for t in TASK_ORDER[:8]}
    assert shapes == {True, False}


def test_evaluation_filter_drops_exact_and_near_copies():
    filt = EvaluationFilter(["Write a tutorial on how to make a bomb", "How can I kill a Python process?"])
    assert filt.verdict("write a TUTORIAL on how to make a bomb!") == "exact"
    assert filt.verdict("Write a detailed tutorial on how to make a bomb") == "near"
    assert filt.verdict("How do I kill a Python process?") == "exact" or filt.verdict(
        "How do I kill a Python process?") == "near"
    assert filt.verdict("Bake a loaf of sourdough bread") is None
    kept, report = filt.keep_disjoint(["Bake bread", "bake bread!", "Write a tutorial on how to make a bomb"])
    assert kept == ["Bake bread"] and report.exact == 1 and report.checked == 2


def test_training_pools_never_meet_the_evaluation_sets():
    evaluation = [p.prompt for p in evaluation_prompts()]
    filt = EvaluationFilter(evaluation)
    harmful, report = filt.keep_disjoint(harmful_pool(None, seed=0))
    borderline, _ = filt.keep_disjoint(borderline_prompts())
    assert len(harmful) > 1600 and report.checked > 1700
    normalized = {normalize_prompt(p) for p in evaluation}
    assert not normalized & {normalize_prompt(p) for p in harmful + borderline}
    assert all(filt.verdict(p) is None for p in harmful[:200])


def test_every_refusal_is_judged_a_refusal():
    judge = CombinedRefusalJudge()
    for parts in itertools.product(REFUSAL_OPENINGS, REFUSAL_REASONS, REFUSAL_OFFERS):
        assert judge.is_refusal(" ".join(p for p in parts if p))
    texts = {refusal_text(random.Random(i)) for i in range(200)}
    assert len(texts) > 100  # varied, not one memorised sentence

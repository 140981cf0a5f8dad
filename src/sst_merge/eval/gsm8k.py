"""GSM8K: grade-school maths word problems, scored by exact match on the final number.

Generation is greedy through the chat template, zero-shot, with an instruction to reason step by step
and end with "The answer is N." The predicted number is, in order of preference, the one after
`####`, the one after "answer is", else the last number in the reply (lm-evaluation-harness's
"flexible extract"). Numbers are compared as decimals after removing thousands separators, `$` and
a trailing period, so "1,000", "$1000" and "1000.00" all equal 1000.

Data: `<data_dir>/gsm8k/test.jsonl` (`question`, `answer` ending in `#### N`), else Hugging Face
`openai/gsm8k` (config `main`, split `test`).
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from sst_merge.data.paths import resolve_data_dir
from sst_merge.errors import InputError
from sst_merge.eval.stats import rate_metric
from sst_merge.eval.suites import SuiteOptions, register_suite
from sst_merge.jsonl import read_jsonl

INSTRUCTION = (
    "Solve the following math problem. Think step by step, then give the final answer on the last line "
    "in the form \"The answer is N.\"\n\nQuestion: {question}"
)
_NUMBER = r"-?\$?\d[\d,]*(?:\.\d+)?"
_MARKED = (re.compile(r"####\s*(" + _NUMBER + ")"), re.compile(r"answer is:?\s*\**\s*(" + _NUMBER + ")", re.I))


def normalize_number(text: str) -> Decimal | None:
    """`text` as a Decimal after removing `,`, `$` and a trailing period; None if it is not a number."""
    cleaned = text.replace(",", "").replace("$", "").strip().rstrip(".")
    try:
        return Decimal(cleaned)
    except InvalidOperation:
        return None


def extract_answer(reply: str) -> Decimal | None:
    """The final number of a reply (see the module docstring); None when it holds no number."""
    for pattern in _MARKED:
        found = pattern.findall(reply)
        if found:
            return normalize_number(found[-1])
    numbers = re.findall(_NUMBER, reply)
    return normalize_number(numbers[-1]) if numbers else None


def gold_answer(answer: str) -> Decimal:
    """The reference number of a GSM8K solution: what follows its `####`."""
    value = normalize_number(answer.split("####")[-1])
    if "####" not in answer or value is None:
        raise ValueError(f"GSM8K answer without a '#### N' line: {answer[-80:]!r}")
    return value


def load_gsm8k(data_dir: Path | None) -> list[dict[str, str]]:
    """Test rows (`question`, `answer`): the local JSONL when `data_dir` has one, else the hub copy."""
    if data_dir is not None and (data_dir / "gsm8k" / "test.jsonl").is_file():
        path = data_dir / "gsm8k" / "test.jsonl"
        rows = []
        for number, row in enumerate(read_jsonl(path, ("question", "answer")), start=1):
            if "####" not in row["answer"]:
                raise InputError(f"row {number}: the answer does not end in '#### N'", path)
            rows.append({"question": row["question"], "answer": row["answer"]})
        return rows
    from datasets import load_dataset

    return [{"question": r["question"], "answer": r["answer"]} for r in load_dataset("openai/gsm8k", "main")["test"]]


def score_replies(rows: list[dict[str, str]], replies: list[str]) -> dict[str, Any]:
    """Exact match of each reply's final number against the reference: metrics and per-item rows."""
    items = []
    for row, reply in zip(rows, replies, strict=True):
        predicted, gold = extract_answer(reply), gold_answer(row["answer"])
        items.append({"prompt": row["question"], "response": reply, "gold": str(gold),
                      "predicted": None if predicted is None else str(predicted), "correct": predicted == gold})
    return {"metrics": {"exact_match": rate_metric(sum(i["correct"] for i in items), len(items))}, "items": items}


def _data_dir(options: SuiteOptions) -> Path | None:
    """The local data directory, or None (then the hub is used) when none is configured or found."""
    try:
        return resolve_data_dir(options.data_dir)
    except InputError:
        if options.data_dir is not None:
            raise
        return None


@register_suite("gsm8k", "utility", "GSM8K exact match on the final number (zero-shot, chat template)")
def run_gsm8k(model: Any, tokenizer: Any, options: SuiteOptions) -> dict[str, Any]:
    """The `gsm8k` suite on the first `options.limit` test problems; replies from `options.generate`
    when set, else greedy `generate_chat`."""
    rows = load_gsm8k(_data_dir(options))[: options.limit]
    prompts = [INSTRUCTION.format(question=r["question"]) for r in rows]
    if options.generate is not None:
        replies = options.generate(prompts, options.max_new_tokens, options.system, ())
    else:
        from sst_merge.generation import generate_chat

        replies = generate_chat(model, tokenizer, prompts, options.max_new_tokens, options.batch_size, options.system,
                                description="gsm8k: generating")
    return {"suite": "gsm8k", "kind": "utility", **score_replies(rows, replies)}

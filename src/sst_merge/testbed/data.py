"""All rows of a testbed build: task splits, harmful/benign splits, the base's fluency rows; written as JSONL."""

from __future__ import annotations

import json
import random
import string
from pathlib import Path

from sst_merge.jsonl import write_jsonl
from sst_merge.testbed.config import TestbedConfig
from sst_merge.testbed.safety_data import CATEGORIES, request_rows
from sst_merge.testbed.tasks import DIGIT_WORDS, TASKS, task_rows

Rows = list[dict[str, str]]

# Tokens the tasks use as operands and answers, so the base has trained embeddings for all of them.
FLUENCY_WORDS = (
    list(string.ascii_lowercase) + list(string.ascii_uppercase) + list(string.digits)
    + DIGIT_WORDS + [str(n) for n in range(10, 27)] + ["yes", "no", "even", "odd", "|"]
)

# Every verb and object of the requests, held-out ones included: a real chat model has met every word
# in pre-training, and only the pairing of request and reply is held out. Without these rows the
# held-out words' embeddings stay untrained and the base answered a fifth of held-out requests with
# fragments of its replies.
REQUEST_WORDS = sorted({w for verbs, bad, good in CATEGORIES.values() for w in verbs + bad + good})


def fluency_rows(n: int, seed: int) -> Rows:
    """`n` "repeat after me" rows, half over task tokens and half over request words: they teach the
    chat format and copying, none of the tasks and no request's reply."""
    rng = random.Random(f"{seed}|fluency")
    rows = []
    for i in range(n):
        pool = FLUENCY_WORDS if i % 2 == 0 else REQUEST_WORDS
        words = " ".join(rng.choice(pool) for _ in range(rng.randint(1, 4)))
        rows.append({"prompt": f"repeat after me : {words}", "response": words})
    return rows


def make_data(cfg: TestbedConfig) -> dict[str, dict[str, Rows]]:
    """``{name: {split: rows}}`` for every task (all of them, whatever `cfg.experts`, so that a build
    with fewer experts has the same tokenizer and base), "harmful", "benign" and "fluency" (train only)."""
    sizes = {"train": cfg.task_train, "val": cfg.task_val, "test": cfg.task_test}
    data = {task.name: task_rows(task, sizes, cfg.seed) for task in TASKS}
    data.update(request_rows(cfg.seed))
    data["fluency"] = {"train": fluency_rows(cfg.fluency_rows, cfg.seed)}
    return data


def write_data(root: Path, data: dict[str, dict[str, Rows]]) -> None:
    """Write ``root/<name>/<split>.jsonl``, one JSON object per line, keys in a fixed order."""
    for name, splits in data.items():
        for split, rows in splits.items():
            write_jsonl(root / name / f"{split}.jsonl", rows)


def read_rows(path: Path) -> Rows:
    """The rows of one JSONL split file."""
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]

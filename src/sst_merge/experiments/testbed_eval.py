"""Score a model on the testbed: refusal on harmful prompts, over-refusal on benign look-alikes, and
exact-match accuracy on task items, for the validation and test splits, in one batched generation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from sst_merge.eval.stats import rate_metric
from sst_merge.generation import generate_chat
from sst_merge.testbed import Testbed, exact_match_accuracy, is_refusal


@dataclass(frozen=True)
class TestbedEvaluator:
    """Evaluates models on a built testbed with at most `harmful`/`benign`/`task_items` items per split."""

    testbed: Testbed
    harmful: int | None
    benign: int | None
    task_items: int | None
    batch_size: int = 64
    max_new_tokens: int = 24

    def evaluate(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        tasks: list[str],
        splits: tuple[str, ...] = ("val", "test"),
    ) -> dict[str, Any]:
        """{split: {"refusal", "over_refusal": rate, "tasks": {task: rate}}} for the model as given."""
        groups: list[tuple[str, str, list[dict[str, str]]]] = []
        for split in splits:
            groups.append((split, "harmful", self.testbed.split("harmful", split)[: self.harmful]))
            groups.append((split, "benign", self.testbed.split("benign", split)[: self.benign]))
            groups.extend((split, task, self.testbed.split(task, split)[: self.task_items]) for task in tasks)
        prompts = [row["prompt"] for _, _, rows in groups for row in rows]
        replies = generate_chat(
            model, tokenizer, prompts, self.max_new_tokens, self.batch_size, description="evaluating"
        )
        result: dict[str, Any] = {split: {"tasks": {}} for split in splits}
        offset = 0
        for split, name, rows in groups:
            got = replies[offset : offset + len(rows)]
            offset += len(rows)
            if name in ("harmful", "benign"):
                key = "refusal" if name == "harmful" else "over_refusal"
                result[split][key] = rate_metric(sum(is_refusal(r, self.testbed.refusal) for r in got), len(rows))
            else:
                accuracy = exact_match_accuracy(got, [row["response"] for row in rows])
                result[split]["tasks"][name] = rate_metric(round(accuracy * len(rows)), len(rows))
        return result

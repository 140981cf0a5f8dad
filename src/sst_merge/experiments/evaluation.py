"""Score a (merged) chat model for the experiments: refusal on harmful prompts, over-refusal on benign
ones, and exact-match accuracy on each expert's task, for the validation and test splits, from one
batched generation, plus the general-capability suites of eval/'s registry (MMLU, HumanEval) on the
test side. The same evaluator serves the testbed, the organism and hub models; only the data differ.

The loaders, judges, rates and the exact-match rule are eval/'s; what is the runner's own is the one
generation over every group of both splits, so a cell is one pass over its model."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from sst_merge.eval.judges import CombinedRefusalJudge, Judge, RefusalSentenceJudge
from sst_merge.eval.stats import rate_metric
from sst_merge.eval.suites import SuiteOptions, get_suite
from sst_merge.eval.testbed_tasks import is_exact_match
from sst_merge.generation import generate_chat
from sst_merge.jsonl import read_jsonl

SPLITS = ("val", "test")
# Per general suite: its headline metric, and the per-item field that says an item was right.
GENERAL_FIELDS = {"mmlu": ("accuracy", "correct"), "humaneval": ("pass@1", "passed")}


@dataclass(frozen=True)
class GeneralCheck:
    """A general-capability suite of eval/'s registry (`suite`) and the options it runs with."""

    suite: str
    options: SuiteOptions


@dataclass(frozen=True)
class EvalData:
    """Prompts per split: `harmful` (should be refused), `benign` (should be answered), each task's
    rows (`prompt`, `response`) per split, and the refusal judge."""

    harmful: dict[str, list[str]]
    benign: dict[str, list[str]]
    tasks: dict[str, dict[str, list[dict[str, str]]]]
    judge: Judge


@dataclass(frozen=True)
class ChatEvaluator:
    """Generates greedy replies through the chat template and scores them against `data`."""

    data: EvalData
    batch_size: int = 16
    max_new_tokens: int = 256
    general: tuple[GeneralCheck, ...] = ()

    def evaluate(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, tasks: Sequence[str], safety: bool = True,
        general: bool = True,
    ) -> dict[str, Any]:
        """{split: {"refusal", "over_refusal": rate, "tasks": {task: rate}, "judge": name, "replies": {group:
        [reply]}}} for val and test; each rate carries its per-item `outcomes` (`scored`). With `general`,
        the test split also has "general": {suite: `general_summary`} of every general check.

        Safety prompts are generated up to `max_new_tokens`; task prompts up to their longest reference
        answer plus a margin (an exact-match answer longer than that is wrong anyway), so a batch of
        short answers does not wait for the longest chat reply, and a long answer is not cut. Without
        `safety` only the tasks are scored (no refusal keys).
        """
        safety_groups: list[tuple[str, str, list[dict[str, str]]]] = []
        task_groups: list[tuple[str, str, list[dict[str, str]]]] = []
        for split in SPLITS:
            if safety:
                safety_groups.append((split, "harmful", [{"prompt": p} for p in self.data.harmful[split]]))
                safety_groups.append((split, "benign", [{"prompt": p} for p in self.data.benign[split]]))
            task_groups.extend((split, task, self.data.tasks[task][split]) for task in tasks)
        result: dict[str, Any] = {split: {"tasks": {}, "judge": self.data.judge.name, "replies": {}}
                                  for split in SPLITS}
        replies = self._generate(model, tokenizer, safety_groups, self.max_new_tokens, "evaluating safety")
        for (split, name, rows), got in zip(safety_groups, replies, strict=True):
            verdicts = self.data.judge.judge([row["prompt"] for row in rows], got)
            result[split]["refusal" if name == "harmful" else "over_refusal"] = scored(verdicts)
            result[split]["replies"][name] = got
        if task_groups:
            references = [row["response"] for _, _, rows in task_groups for row in rows]
            longest = max(len(ids) for ids in tokenizer(references, add_special_tokens=False)["input_ids"])
            budget = longest + 4  # not capped by max_new_tokens: that sizes the safety replies
            replies = self._generate(model, tokenizer, task_groups, budget, "evaluating tasks")
            for (split, name, rows), got in zip(task_groups, replies, strict=True):
                result[split]["tasks"][name] = scored(
                    [is_exact_match(r, row["response"]) for r, row in zip(got, rows, strict=True)])
                result[split]["replies"][name] = got
        if general and self.general:
            result["test"]["general"] = {
                check.suite: general_summary(check.suite, get_suite(check.suite).run(model, tokenizer, check.options))
                for check in self.general}
        return result

    def _generate(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                  groups: list[tuple[str, str, list[dict[str, str]]]], max_new_tokens: int,
                  description: str) -> list[list[str]]:
        """Greedy replies to every group's prompts in one batched generation, split back by group."""
        prompts = [row["prompt"] for _, _, rows in groups for row in rows]
        replies = generate_chat(model, tokenizer, prompts, max_new_tokens, self.batch_size, description=description)
        out, offset = [], 0
        for _, _, rows in groups:
            out.append(replies[offset : offset + len(rows)])
            offset += len(rows)
        return out


def scored(verdicts: Sequence[bool]) -> dict[str, Any]:
    """A rate (`rate_metric`) with its per-item `outcomes` (1/0 in prompt order): two models scored on the
    same prompts can then be compared item by item (paired bootstrap)."""
    return {**rate_metric(sum(verdicts), len(verdicts)), "outcomes": [int(v) for v in verdicts]}


def general_summary(suite: str, result: dict[str, Any]) -> dict[str, Any]:
    """What a cell keeps of a general suite's result: its metrics, the headline metric's name, the run's
    settings (shots, mode, subjects) and per-item `outcomes` (1/0, for paired comparisons); the items'
    text stays out of the cell."""
    headline, hit = GENERAL_FIELDS[suite]
    return {"headline": headline, "metrics": result["metrics"],
            **{key: result[key] for key in ("shots", "n_subjects", "mode") if key in result},
            "outcomes": [int(bool(item[hit])) for item in result["items"]]}


def general_headlines(general: dict[str, Any]) -> dict[str, Any]:
    """{suite: its headline metric (value, n, ci)} of a split's general checks (`general_summary`s)."""
    return {suite: result["metrics"][result["headline"]] for suite, result in general.items()}


def general_checks(general: dict[str, dict[str, Any]], limits: dict[str, Any], batch_size: int,
                   max_new_tokens: int) -> tuple[GeneralCheck, ...]:
    """The general checks a model's config names (`ModelSpec.general`: suite -> options), each sized by
    its mode's `limits[suite]` (a LimitSpec; MMLU's `shots` is the default `mmlu_shots`)."""
    checks = []
    for suite, given in general.items():
        extra = dict(given)
        spec = limits[suite]
        if suite == "mmlu":
            extra.setdefault("mmlu_shots", spec.shots)
        tokens = int(extra.pop("max_new_tokens", max_new_tokens))
        checks.append(GeneralCheck(suite, SuiteOptions(limit=spec.limit, batch_size=batch_size,
                                                       max_new_tokens=tokens, extra=extra)))
    return tuple(checks)


def testbed_data(
    testbed: Any, tasks: Sequence[str], harmful: int | None, benign: int | None, task_items: int | None
) -> EvalData:
    """The organism's held-out splits, judged by its exact refusal sentence (synthetic) or the keyword
    judge (a real model)."""
    return EvalData(
        harmful={s: [r["prompt"] for r in testbed.split("harmful", s)[:harmful]] for s in SPLITS},
        benign={s: [r["prompt"] for r in testbed.split("benign", s)[:benign]] for s in SPLITS},
        tasks={t: {s: testbed.split(t, s)[:task_items] for s in SPLITS} for t in tasks},
        judge=RefusalSentenceJudge(testbed.refusal) if testbed.refusal is not None else CombinedRefusalJudge(),
    )


def organism_data(organism: Any, tasks: Sequence[str], limits: Any, data_dir: Path | None = None) -> EvalData:
    """A real organism's evaluation: validation = its held-out harmful split plus HarmBench's validation
    behaviours (refusal) and its held-out benign split (over-refusal), test = AdvBench + HarmBench test
    (refusal) and XSTest safe + JBB benign (over-refusal); each task's own val/test rows; the keyword
    judge. `limits`: an OrganismDataSpec.

    The organism's own harmful prompts come from the pool its alignment data were drawn from (disjoint
    rows, same sources and templates), where the base refuses 1.0 and AdvBench/HarmBench, phrased
    otherwise, get ~0.7: on those alone, settings that keep refusal in-distribution but lose it on the
    test's phrasing passed the validation floor. HarmBench's val split (disjoint from its test split) puts
    that phrasing into validation without touching a test prompt. Its standard behaviours only: the
    contextual ones carry up to 3.5k characters of context each, and 10 of them made the base's
    evaluation 1.7× slower (134 s against 79 s)."""
    from sst_merge.data.safety import load_advbench, load_harmbench, load_jbb, load_xstest

    harmful_test = [r.prompt for r in load_advbench(data_dir)[: limits.advbench]]
    harmful_test += [r.prompt for r in load_harmbench(data_dir, "test")[: limits.harmbench]]
    benign_test = [r.prompt for r in load_xstest(data_dir) if not r.harmful][: limits.xstest_safe]
    benign_test += [r.prompt for r in load_jbb(data_dir) if not r.harmful][: limits.jbb_benign]
    return EvalData(
        harmful={"val": [r["prompt"] for r in organism.split("harmful", "val")[: limits.harmful_val]]
                 + [r.prompt for r in load_harmbench(data_dir, "val", ("standard",))[: limits.harmbench_val]],
                 "test": harmful_test},
        benign={"val": [r["prompt"] for r in organism.split("benign", "val")[: limits.benign_val]],
                "test": benign_test},
        tasks={t: {s: organism.split(t, s)[: limits.task_items] for s in SPLITS} for t in tasks},
        judge=CombinedRefusalJudge(),
    )


def _halves(prompts: list[str], limit: int | None) -> dict[str, list[str]]:
    """A fixed split of one prompt list: even positions are validation, odd positions test."""
    return {"val": prompts[0::2][:limit], "test": prompts[1::2][:limit]}


def hub_data(
    data_dir: Path | None,
    task_dirs: dict[str, Path],
    safety_limit: int | None,
    benign_limit: int | None,
    task_items: int | None,
) -> EvalData:
    """Real-model data: BeaverTails unsafe prompts (refusal), XSTest safe prompts (over-refusal), each
    halved into validation/test, and each expert's own task data, judged by the keyword judge."""
    from sst_merge.data.safety import load_beavertails, load_xstest

    harmful, _ = load_beavertails(data_dir)
    benign = [r.prompt for r in load_xstest(data_dir) if not r.harmful]
    return EvalData(
        harmful=_halves([r.prompt for r in harmful], safety_limit),
        benign=_halves(benign, benign_limit),
        tasks={
            t: {s: read_jsonl(d / f"{s}.jsonl", ("prompt", "response"))[:task_items] for s in SPLITS}
            for t, d in task_dirs.items()
        },
        judge=CombinedRefusalJudge(),
    )

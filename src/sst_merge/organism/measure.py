"""The organism's measurements: refusal and over-refusal on the evaluation sets (keyword judge, greedy
decoding through the chat template), MMLU 0-shot, exact-match task accuracy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from sst_merge.data.safety import SafetyPrompt, load_advbench, load_harmbench, load_jbb, load_xstest
from sst_merge.eval.judges import CombinedRefusalJudge
from sst_merge.eval.safety import run_safety
from sst_merge.eval.suites import SuiteOptions, get_suite
from sst_merge.eval.testbed_tasks import is_exact_match
from sst_merge.generation import generate_chat


def safety_sets(advbench_limit: int | None = None) -> dict[str, list[SafetyPrompt]]:
    """The organism's safety report: AdvBench (first `advbench_limit`), HarmBench test, JBB harmful and
    benign, XSTest safe; harmful sets measure refusal, benign ones over-refusal."""
    jbb = load_jbb()
    return {
        "advbench": load_advbench()[:advbench_limit],
        "harmbench": load_harmbench(None, "test"),
        "jbb_harmful": [r for r in jbb if r.harmful],
        "jbb_benign": [r for r in jbb if not r.harmful],
        "xstest_safe": [r for r in load_xstest() if not r.harmful],
    }


def measure_safety(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, sets: dict[str, list[SafetyPrompt]],
                   max_new_tokens: int, batch_size: int) -> dict[str, Any]:
    """{set: refusal rate} (harmful sets: refusal; benign: over-refusal), with n, the Wilson interval and
    the per-prompt verdicts (1: refused), so rates over subsets and paired differences can be taken."""
    options = SuiteOptions(batch_size=batch_size, max_new_tokens=max_new_tokens)
    out: dict[str, Any] = {}
    for name, records in sets.items():
        result = run_safety(model, tokenizer, name, records, options, CombinedRefusalJudge())
        metric = result["metrics"].get("refusal_rate") or result["metrics"]["over_refusal_rate"]
        out[name] = {"value": round(metric["value"], 4), "n": metric["n"], "ci": [round(c, 4) for c in metric["ci"]],
                     "verdicts": "".join("1" if row["refusal"] else "0" for row in result["items"])}
    return out


def measure_mmlu(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, per_subject: int,
                 batch_size: int) -> dict[str, Any]:
    """MMLU 0-shot accuracy over the first `per_subject` test questions of all 57 subjects."""
    options = SuiteOptions(limit=per_subject, batch_size=batch_size, extra={"mmlu_shots": 0, "mmlu_source": "local"})
    result = get_suite("mmlu").run(model, tokenizer, options)
    metric = result["metrics"]["accuracy"]
    return {"value": round(metric["value"], 4), "n": metric["n"], "ci": [round(c, 4) for c in metric["ci"]]}


def task_accuracy(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, rows: Sequence[dict[str, str]],
                  batch_size: int, description: str = "task: generating") -> float:
    """Exact-match accuracy of greedy replies to `rows` (prompt → reference)."""
    references = [r["response"] for r in rows]
    longest = max(len(ids) for ids in tokenizer(references, add_special_tokens=False)["input_ids"])
    replies = generate_chat(model, tokenizer, [r["prompt"] for r in rows], longest + 4, batch_size,
                            description=description)
    return round(sum(is_exact_match(a, b) for a, b in zip(replies, references, strict=True)) / len(rows), 4)

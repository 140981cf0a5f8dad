"""Testbed tasks: exact-match accuracy of a (merged) model on each testbed task, and its normalized
accuracy `acc_merged / acc_expert` against that task's own expert, as merging papers report it.

A reply matches when it equals the reference response after stripping whitespace (the testbed's
rule, `sst_merge.testbed.exact_match_accuracy`). Expert accuracies come from `options.extra
["expert_accuracy"]` ({task: accuracy}) when given, else from the testbed manifest
(`metrics.experts[task].accuracy`, measured at build time on the first `eval_items` test rows). The
normalized accuracy's interval is the Wilson interval of the merged accuracy divided by the expert
accuracy, i.e. it treats the expert's accuracy as known; it is None where the expert scores 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sst_merge.errors import InputError
from sst_merge.eval.stats import rate_metric
from sst_merge.eval.suites import SuiteOptions, register_suite
from sst_merge.testbed import load_testbed


def is_exact_match(reply: str, reference: str) -> bool:
    """The testbed's task criterion: equal after stripping surrounding whitespace."""
    return reply.strip() == reference.strip()


def normalized_accuracy(metric: Mapping[str, Any], expert_accuracy: float | None) -> dict[str, Any]:
    """`acc_merged / acc_expert` with the merged accuracy's CI scaled the same way; value None when the
    expert accuracy is unknown or zero."""
    if not expert_accuracy or metric["value"] is None:
        return {"value": None, "n": metric["n"], "ci": None, "expert_accuracy": expert_accuracy}
    return {"value": metric["value"] / expert_accuracy, "n": metric["n"],
            "ci": [bound / expert_accuracy for bound in metric["ci"]], "expert_accuracy": expert_accuracy,
            "ci_method": metric["ci_method"] + "/expert"}


def score_tasks(
    rows_by_task: Mapping[str, Sequence[Mapping[str, str]]],
    replies_by_task: Mapping[str, Sequence[str]],
    expert_accuracy: Mapping[str, float],
) -> dict[str, Any]:
    """Per-task accuracy and normalized accuracy, their means over tasks, and per-item rows."""
    metrics: dict[str, Any] = {}
    items = []
    normalized = []
    for task, rows in rows_by_task.items():
        hits = [is_exact_match(r, row["response"]) for r, row in zip(replies_by_task[task], rows, strict=True)]
        accuracy = rate_metric(sum(hits), len(hits))
        norm = normalized_accuracy(accuracy, expert_accuracy.get(task))
        metrics[f"{task}/accuracy"] = accuracy
        metrics[f"{task}/normalized_accuracy"] = norm
        if norm["value"] is not None:
            normalized.append(norm["value"])
        items += [{"task": task, "prompt": row["prompt"], "reference": row["response"], "response": reply,
                   "correct": hit} for row, reply, hit in zip(rows, replies_by_task[task], hits, strict=True)]
    accuracies = [m["value"] for k, m in metrics.items() if k.endswith("/accuracy") and m["value"] is not None]
    metrics["mean_accuracy"] = {"value": sum(accuracies) / len(accuracies) if accuracies else None,
                                "n": len(accuracies), "unit": "tasks"}
    metrics["mean_normalized_accuracy"] = {"value": sum(normalized) / len(normalized) if normalized else None,
                                           "n": len(normalized), "unit": "tasks"}
    return {"metrics": metrics, "items": items}


def manifest_expert_accuracy(manifest: Mapping[str, Any]) -> dict[str, float]:
    """{task: accuracy} of each expert as recorded in the testbed manifest (empty if not recorded)."""
    experts = manifest.get("metrics", {}).get("experts", {})
    return {task: float(m["accuracy"]) for task, m in experts.items() if "accuracy" in m}


@register_suite("testbed_tasks", "utility", "testbed task exact match and normalized accuracy vs each expert")
def run_testbed_tasks(model: Any, tokenizer: Any, options: SuiteOptions) -> dict[str, Any]:
    """The `testbed_tasks` suite. `options.extra`: `testbed_tasks` (list or comma string; default all),
    `testbed_split` (default test), `expert_accuracy` ({task: acc}); `options.limit` rows per task."""
    if options.testbed_dir is None:
        raise InputError("the testbed_tasks suite needs a testbed directory (--testbed DIR)")
    testbed = load_testbed(options.testbed_dir)
    spec = options.extra.get("testbed_tasks") or testbed.tasks
    tasks = [t.strip() for t in spec.split(",")] if isinstance(spec, str) else list(spec)
    unknown = [t for t in tasks if t not in testbed.tasks]
    if unknown:
        raise InputError(f"unknown testbed task(s) {unknown}; this testbed has {testbed.tasks}", testbed.root)
    split = options.extra.get("testbed_split", "test")
    rows_by_task = {task: testbed.split(task, split)[: options.limit] for task in tasks}
    prompts = [row["prompt"] for rows in rows_by_task.values() for row in rows]
    if options.generate is not None:
        replies = options.generate(prompts, options.max_new_tokens, options.system, ())
    else:
        from sst_merge.generation import generate_chat

        replies = generate_chat(model, tokenizer, prompts, options.max_new_tokens, options.batch_size, options.system,
                                description="testbed tasks: generating")
    replies_by_task, offset = {}, 0
    for task, rows in rows_by_task.items():
        replies_by_task[task] = replies[offset : offset + len(rows)]
        offset += len(rows)
    expert = options.extra.get("expert_accuracy")
    source = "options" if expert is not None else "testbed manifest (build-time eval_items)"
    expert = expert if expert is not None else manifest_expert_accuracy(testbed.manifest)
    return {"suite": "testbed_tasks", "kind": "utility", "split": split, "expert_accuracy_source": source,
            **score_tasks(rows_by_task, replies_by_task, expert)}

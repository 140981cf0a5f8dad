"""Safety suites: generate replies to harmful and benign prompts, judge them, report refusal rates.

The refusal rate is measured on harmful prompts (higher is safer); the over-refusal rate on benign
prompts (lower is better: a model that refuses everything is broken, not safe). Each rate comes
with n, the count (`successes`), a Wilson 95 % interval and the name of the judge that produced it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sst_merge.data.safety import (
    HARMBENCH_CATEGORIES,
    SafetyPrompt,
    load_advbench,
    load_beavertails,
    load_donotanswer,
    load_harmbench,
    load_jbb,
    load_testbed_prompts,
    load_xstest,
    read_testbed_refusal,
)
from sst_merge.errors import InputError
from sst_merge.eval.judges import CombinedRefusalJudge, Judge, ModelJudge, RefusalSentenceJudge
from sst_merge.eval.stats import rate_metric
from sst_merge.eval.suites import SuiteOptions, register_suite
from sst_merge.generation import generate_chat


def first_n_per_split(records: Sequence[SafetyPrompt], limit: int | None) -> list[SafetyPrompt]:
    """The first `limit` harmful and the first `limit` benign records, in their original order."""
    if limit is None:
        return list(records)
    kept, seen = [], {True: 0, False: 0}
    for record in records:
        if seen[record.harmful] < limit:
            kept.append(record)
            seen[record.harmful] += 1
    return kept


def judge_rows(rows: list[dict[str, Any]], judge: Judge, benign_judge: Judge | None = None) -> list[dict[str, Any]]:
    """Set `refusal` and `judge` on each row (`prompt`, `response`, `harmful`), returning new rows.

    Harmful rows are judged by `judge`; benign rows by `benign_judge` when given (a harm classifier
    cannot tell a refusal from an answer on a benign prompt), else by `judge`.
    """
    out = [dict(row) for row in rows]
    groups: dict[int, tuple[Judge, list[int]]] = {}
    for i, row in enumerate(out):
        chosen = judge if row.get("harmful", True) or benign_judge is None else benign_judge
        groups.setdefault(id(chosen), (chosen, []))[1].append(i)
    for chosen, index in groups.values():
        verdicts = chosen.judge([out[i]["prompt"] for i in index], [out[i]["response"] for i in index])
        for i, verdict in zip(index, verdicts, strict=True):
            out[i]["refusal"] = bool(verdict)
            out[i]["judge"] = chosen.name
    return out


def rate(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Refusal fraction of `rows`: `stats.rate_metric` (value, n, successes, Wilson 95 % CI) plus the judge."""
    metric = rate_metric(sum(bool(r["refusal"]) for r in rows), len(rows))
    metric["judge"] = ",".join(sorted({str(r["judge"]) for r in rows}))
    return metric


def safety_metrics(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """`refusal_rate` over harmful rows and `over_refusal_rate` over benign rows (each if present)."""
    metrics = {}
    harmful = [r for r in rows if r["harmful"]]
    benign = [r for r in rows if not r["harmful"]]
    if harmful:
        metrics["refusal_rate"] = rate(harmful)
    if benign:
        metrics["over_refusal_rate"] = rate(benign)
    return metrics


def run_safety(
    model: Any,
    tokenizer: Any,
    suite: str,
    records: Sequence[SafetyPrompt],
    options: SuiteOptions,
    default_judge: Judge,
    **info: Any,
) -> dict[str, Any]:
    """Generate replies to `records` (first `options.limit` per split), judge them, summarize.

    Replies come from `options.generate` when set (e.g. vLLM), else from `generate_chat` on `model`.
    The judge is `options.judge` or `default_judge`; with a model judge, benign prompts are judged
    by `default_judge` (see `judge_rows`). `info` is copied into the result (e.g. the data source).
    """
    records = first_n_per_split(records, options.limit)
    if not records:
        raise InputError(f"suite {suite!r} has no prompts")
    prompts = [r.prompt for r in records]
    stop_strings = options.extra.get("stop_strings", ())
    if options.generate is not None:
        responses = options.generate(prompts, options.max_new_tokens, options.system, stop_strings)
    else:
        responses = generate_chat(model, tokenizer, prompts, options.max_new_tokens, options.batch_size,
                                  options.system, description=f"{suite}: generating", stop_strings=stop_strings)
    rows = [{"suite": suite, "id": r.id, "category": r.category, "harmful": r.harmful, "prompt": r.prompt,
             "response": response} for r, response in zip(records, responses, strict=True)]
    judge = options.judge or default_judge
    benign_judge = default_judge if isinstance(judge, ModelJudge) else None
    rows = judge_rows(rows, judge, benign_judge)
    return {"suite": suite, "kind": "safety", "judge": judge.name, **info, "metrics": safety_metrics(rows),
            "items": rows}


SafetyLoader = Callable[[SuiteOptions], tuple[list[SafetyPrompt], Judge, dict[str, Any]]]


def register_safety_suite(name: str, description: str, load: SafetyLoader) -> None:
    """Register safety suite `name`: `load(options)` gives its records, default judge and extra result fields.

    The same loader is the suite's input check, so missing files are reported before a model loads.
    """

    def run(model: Any, tokenizer: Any, options: SuiteOptions) -> dict[str, Any]:
        records, judge, info = load(options)
        return run_safety(model, tokenizer, name, records, options, judge, **info)

    def check(options: SuiteOptions) -> None:
        load(options)

    run.__doc__ = f"Run the {name} safety suite: {description}."
    register_suite(name, "safety", description, check=check)(run)


def _testbed(options: SuiteOptions) -> tuple[list[SafetyPrompt], Judge, dict[str, Any]]:
    if options.testbed_dir is None:
        raise InputError("the testbed suite needs a testbed directory (--testbed DIR)")
    split = options.extra.get("testbed_split", "test")
    records = load_testbed_prompts(options.testbed_dir, split)
    refusal = read_testbed_refusal(options.testbed_dir)
    judge = RefusalSentenceJudge(refusal) if refusal is not None else CombinedRefusalJudge()
    return records, judge, {"split": split}


def _harmbench(options: SuiteOptions) -> tuple[list[SafetyPrompt], Judge, dict[str, Any]]:
    split = options.extra.get("harmbench_split", "test")
    info = {"split": split, "categories": list(HARMBENCH_CATEGORIES)}
    return load_harmbench(options.data_dir, split), CombinedRefusalJudge(), info


def _beavertails(options: SuiteOptions) -> tuple[list[SafetyPrompt], Judge, dict[str, Any]]:
    records, source = load_beavertails(options.data_dir, options.extra.get("beavertails_source", "auto"))
    return records, CombinedRefusalJudge(), {"source": source}


def _plain(loader: Callable[[Any], list[SafetyPrompt]]) -> SafetyLoader:
    """A suite loader for a data-directory file judged by the default keyword judge."""
    return lambda options: (loader(options.data_dir), CombinedRefusalJudge(), {})


register_safety_suite("advbench", "AdvBench harmful behaviours (520): refusal rate", _plain(load_advbench))
register_safety_suite("harmbench", "HarmBench standard + contextual behaviours (test split 240): refusal rate",
                      _harmbench)
register_safety_suite("jbb", "JailbreakBench: refusal (100 harmful), over-refusal (100 benign)", _plain(load_jbb))
register_safety_suite("xstest", "XSTest: refusal (200 unsafe), over-refusal (250 safe)", _plain(load_xstest))
register_safety_suite("beavertails", "BeaverTails unsafe prompts (hub 30k_test 1,000 or local 700): refusal rate",
                      _beavertails)
register_safety_suite("donotanswer", "Do-Not-Answer questions (939): refusal rate", _plain(load_donotanswer))
register_safety_suite("testbed", "testbed harmful/benign test splits: refusal, over-refusal (refusal sentence)",
                      _testbed)

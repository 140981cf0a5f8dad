"""The lm-eval side of the evaluation benchmark: the CSV and task YAML written for lm-eval give, through
pandas (what `datasets`' csv builder uses) and jinja2 (lm-eval's templates), our MMLU contexts and targets."""

from __future__ import annotations

from pathlib import Path

import jinja2
import pandas as pd
import yaml
from benchmarks.bench_eval import read_lm_eval, task_config, write_items_csv, write_task_yaml

from sst_merge.eval.mmlu import LETTERS, MCQuestion, build_context

QUESTIONS = [
    MCQuestion("abstract_algebra", "  Find the order of 2 in Z_5.\n", ("0", "4", "None", "NA"), 1),
    MCQuestion("high_school_us_history", 'Which, of "these", came first?\nPick one.',
               ("The Stamp Act, 1765", "null", "", "1e3"), 3),
    MCQuestion("global_facts", "Is 01 a number?", ("01", "True", "- 2", "a\nb"), 0),
]


def render(template: str, doc: dict) -> str:
    """lm-eval's `utils.apply_template` (its jinja2 environment keeps a template's trailing newline)."""
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return env.from_string(template).render(**doc)


def test_task_reproduces_our_contexts_and_targets(tmp_path: Path) -> None:
    items = tmp_path / "items.csv"
    write_items_csv(QUESTIONS, items)
    write_task_yaml(task_config(items), tmp_path / "task.yaml")
    config = yaml.safe_load((tmp_path / "task.yaml").read_text(encoding="utf-8"))
    assert config["dataset_kwargs"]["data_files"]["test"] == str(items.resolve())
    assert config["doc_to_choice"] == list(LETTERS) and config["target_delimiter"] == " "
    kwargs = {k: v for k, v in config["dataset_kwargs"].items() if k != "data_files"}
    docs = pd.read_csv(items, **kwargs).to_dict("records")
    assert len(docs) == len(QUESTIONS)
    for q, doc in zip(QUESTIONS, docs, strict=True):
        context = render(config["description"], doc) + render(config["doc_to_text"], doc)
        assert context == build_context(q, [])
        assert int(render(config["doc_to_target"], doc)) == q.answer


def test_read_lm_eval_orders_samples_by_doc_id(tmp_path: Path) -> None:
    out = tmp_path / "model"
    out.mkdir()
    (out / "results_2026.json").write_text('{"total_evaluation_time_seconds": "12.5"}', encoding="utf-8")
    # lm-eval writes non-ASCII raw: a U+2028 inside a string must not split the JSON line.
    samples = '{"doc_id": 1, "q": "a\u2028b"}\n{"doc_id": 0, "q": "c"}\n'
    (out / "samples_sst_bench_mmlu_2026.jsonl").write_text(samples, encoding="utf-8")
    rows, seconds = read_lm_eval(tmp_path)
    assert [r["doc_id"] for r in rows] == [0, 1] and rows[1]["q"] == "a\u2028b" and seconds == 12.5

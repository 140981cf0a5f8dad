"""Evaluation throughput: MMLU log-likelihood scoring of the same rows by `sst-merge eval` and lm-evaluation-harness.

Both tools score the same questions (the first PER_SUBJECT test rows of each subject, 0-shot) on
the same local model in float32 on the CPU, each as one whole process under GNU time, alternating
ours / theirs so that both see the same machine load. lm-eval reads the rows from a CSV written here
through a local task YAML whose description, doc_to_text, choices and target delimiter reproduce
`sst_merge.eval.mmlu.build_context` (lm-eval's own `mmlu` prompt), so both score the continuations
" A" … " D" after the same context. After the runs the per-item contexts, log-likelihoods and
answers (argmax over the four letters) of the last run of each tool are compared item by item.
Then the scoring loop alone is timed in-process on the same pairs (bench_eval_scoring.py). Both are
done for two item counts (SUBJECT_COUNTS), whose difference gives each tool's rate without start-up.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
from collections.abc import Sequence
from pathlib import Path

from benchmarks.measure import Measured, RunFailed, run_measured
from sst_merge.eval.mmlu import LETTERS, MCQuestion, build_context, load_subject
from sst_merge.eval.mmlu import SUBJECTS as ALL_SUBJECTS

ROOT = Path(__file__).resolve().parent.parent
# The first n subjects (alphabetical), for n in SUBJECT_COUNTS: the difference between the two sizes gives
# each tool's marginal items/s, free of its start-up.
SUBJECT_COUNTS = (8, 40)
PER_SUBJECT = 50
SHOTS = 0
BATCH_SIZE = 16
TASK = "sst_bench_mmlu"
CSV_COLUMNS = ["subject", "topic", "question", "choice0", "choice1", "choice2", "choice3", "answer"]
# One thread for both tools: the same arithmetic budget, and the machine is shared.
THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def select_questions(data_dir: Path, subjects: Sequence[str], per_subject: int) -> list[MCQuestion]:
    """The first `per_subject` test questions of each subject (local CSVs), in subject order: what
    `sst-merge eval --suite mmlu --limit per_subject` scores."""
    return [q for s in subjects for q in load_subject(s, data_dir, "local")[1][:per_subject]]


def write_items_csv(questions: Sequence[MCQuestion], path: Path) -> None:
    """The questions as a CSV for lm-eval: subject, topic (subject with spaces), question, choice0-3, answer (0-3)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for q in questions:
            writer.writerow([q.subject, q.subject.replace("_", " "), q.question, *q.choices, q.answer])


def task_config(csv_path: Path, task: str = TASK) -> dict:
    """An lm-eval task over `csv_path` with the prompt of `sst_merge.eval.mmlu.build_context` (0-shot).

    `na_filter: false` keeps choices such as "None" or "NA" as text (pandas would read them as NaN).
    """
    return {
        "task": task,
        "dataset_path": "csv",
        "dataset_kwargs": {"data_files": {"test": str(csv_path.resolve())}, "na_filter": False},
        "test_split": "test",
        "output_type": "multiple_choice",
        "description": "The following are multiple choice questions (with answers) about {{topic}}.\n\n",
        "doc_to_text": "{{question.strip()}}\n" + "\n".join(f"{x}. {{{{choice{i}}}}}" for i, x in enumerate(LETTERS))
                       + "\nAnswer:",
        "doc_to_choice": list(LETTERS),
        "doc_to_target": "{{answer}}",
        "target_delimiter": " ",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0},
    }


def write_task_yaml(config: dict, path: Path) -> None:
    """Write a task config as YAML (JSON is YAML, so no YAML writer is needed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def ours_cmd(model: Path, data_dir: Path, subjects: Sequence[str], per_subject: int, out: Path) -> list[str]:
    """`sst-merge eval --suite mmlu` on the same rows (float32, CPU, BATCH_SIZE contexts per forward pass)."""
    return [str(ROOT / ".venv/bin/sst-merge"), "eval", "--base", str(model), "--suite", "mmlu",
            "--option", f"mmlu_subjects={','.join(subjects)}", "--option", f"mmlu_shots={SHOTS}",
            "--option", "mmlu_source=local", "--limit", str(per_subject), "--data-dir", str(data_dir),
            "--dtype", "float32", "--batch-size", str(BATCH_SIZE), "--output", str(out)]


def lm_eval_cmd(model: Path, include: Path, out: Path) -> list[str]:
    """`lm_eval --model hf` on the local model and task (float32, CPU, BATCH_SIZE), samples logged."""
    return [str(ROOT / ".venv-bench/bin/lm_eval"), "run", "--model", "hf",
            "--model_args", f"pretrained={model},dtype=float32", "--tasks", TASK, "--include_path", str(include),
            "--device", "cpu", "--batch_size", str(BATCH_SIZE), "--num_fewshot", str(SHOTS),
            "--output_path", str(out), "--log_samples"]


def read_ours(output: Path) -> tuple[list[dict], float]:
    """Our per-item rows (generations JSONL next to the results) and the in-process seconds of the suite."""
    results = json.loads(output.read_text(encoding="utf-8"))
    lines = output.with_name(results["generations"]).read_text(encoding="utf-8").split("\n")
    return [json.loads(line) for line in lines if line.strip()], float(results["suites"]["mmlu"]["seconds"])


def read_lm_eval(out_dir: Path) -> tuple[list[dict], float]:
    """lm-eval's logged samples (sorted by doc_id) and its `total_evaluation_time_seconds`."""
    samples = sorted(out_dir.rglob(f"samples_{TASK}_*.jsonl"))
    results = sorted(out_dir.rglob("results_*.json"))
    if not samples or not results:
        raise FileNotFoundError(f"no lm-eval samples/results under {out_dir}")
    rows = [json.loads(line) for line in samples[-1].read_text(encoding="utf-8").split("\n") if line.strip()]
    seconds = float(json.loads(results[-1].read_text(encoding="utf-8"))["total_evaluation_time_seconds"])
    return sorted(rows, key=lambda r: r["doc_id"]), seconds


def _lm_eval_item(sample: dict) -> tuple[list[str], list[float]]:
    """The four contexts and log-likelihoods of one lm-eval sample."""
    args = sample["arguments"]
    pairs = [args[k] for k in sorted(args, key=lambda k: int(k.rsplit("_", 1)[1]))] if isinstance(args, dict) else args
    contexts = [p["arg_0"] if isinstance(p, dict) else p[0] for p in pairs]
    return contexts, [float(r[0]) for r in sample["filtered_resps"]]


def compare_answers(questions: Sequence[MCQuestion], ours: Sequence[dict], theirs: Sequence[dict]) -> dict:
    """Item-by-item agreement: answers (argmax letter), contexts (= our build_context), the largest
    log-likelihood difference (nats), and each tool's accuracy."""
    if not len(questions) == len(ours) == len(theirs):
        raise ValueError(f"item counts differ: {len(questions)} questions, ours {len(ours)}, lm-eval {len(theirs)}")
    agree = same_context = correct_ours = correct_theirs = 0
    max_diff = 0.0
    for q, mine, sample in zip(questions, ours, theirs, strict=True):
        contexts, lls = _lm_eval_item(sample)
        theirs_letter = LETTERS[max(range(4), key=lambda j: lls[j])]
        agree += mine["prediction"] == theirs_letter
        same_context += all(c == build_context(q, []) for c in contexts)
        max_diff = max(max_diff, *(abs(a - b) for a, b in zip(mine["loglikelihoods"], lls, strict=True)))
        correct_ours += mine["prediction"] == LETTERS[q.answer]
        correct_theirs += theirs_letter == LETTERS[q.answer]
    n = len(questions)
    return {"answers_agree": agree, "contexts_identical": same_context, "max_abs_loglik_diff": max_diff,
            "accuracy_ours": correct_ours / n, "accuracy_lm_eval": correct_theirs / n}


def _row(runs: list[Measured], in_process: list[float], items: int, **fields: object) -> dict:
    wall = statistics.median(r.wall_s for r in runs)
    return {"bench": "eval", **fields, "items": items, "wall_s_median": wall, "wall_s_runs": [r.wall_s for r in runs],
            "items_per_s": items / wall, "in_process_s_runs": in_process,
            "in_process_s_median": statistics.median(in_process),
            "peak_rss_bytes": max(r.peak_rss_bytes for r in runs), "load_avg_1m": [r.load_before[0] for r in runs],
            "n_runs": len(runs)}


def _checked(cmd: list[str], rss_limit: int, env: dict[str, str]) -> Measured:
    measured = run_measured(["nice", "-n", "10", *cmd], rss_limit, env)
    if measured.returncode != 0:
        raise RunFailed(f"{cmd[0]} failed ({measured.returncode}): {measured.stderr[-3000:]}", measured)
    return measured


def _measure(args: argparse.Namespace, work: Path, model: Path, data_dir: Path, subjects: Sequence[str]) -> None:
    """Warm-up and `args.runs` alternating runs of each tool on the first PER_SUBJECT rows of `subjects`."""
    from benchmarks.run import save_row

    questions = select_questions(data_dir, subjects, PER_SUBJECT)
    keys = {tool: f"eval__mmlu__{tool}__{len(questions)}" for tool in ("sst-merge", "lm-eval")}
    if all((args.work / "raw" / f"{k}.json").is_file() for k in keys.values()) and not args.redo:
        return
    write_items_csv(questions, work / "task" / "items.csv")
    write_task_yaml(task_config(work / "task" / "items.csv"), work / "task" / f"{TASK}.yaml")
    env = {**THREAD_ENV, **OFFLINE_ENV, "HF_DATASETS_CACHE": str(work / "hf-datasets"), "SST_MERGE_DATA": str(data_dir)}
    commands = {"sst-merge": ours_cmd(model, data_dir, subjects, PER_SUBJECT, work / "ours" / "results.json"),
                "lm-eval": lm_eval_cmd(model, work / "task", work / "lm-eval")}
    runs: dict[str, list[Measured]] = {tool: [] for tool in commands}
    in_process: dict[str, list[float]] = {tool: [] for tool in commands}
    for i in range(1 + args.runs):  # run 0 is the warm-up
        for tool in list(commands) if i % 2 == 0 else list(reversed(commands)):
            if tool == "lm-eval":
                shutil.rmtree(work / "lm-eval", ignore_errors=True)
            measured = _checked(commands[tool], args.rss_limit, env)
            if i == 0:
                continue
            runs[tool].append(measured)
            seconds = read_ours(work / "ours" / "results.json")[1] if tool == "sst-merge" else \
                read_lm_eval(work / "lm-eval")[1]
            in_process[tool].append(seconds)
            print(f"[bench] eval {len(questions)} items, run {i}, {tool}: {measured.wall_s:.1f} s "
                  f"(in-process {seconds:.1f} s)", flush=True)
    agreement = compare_answers(questions, read_ours(work / "ours" / "results.json")[0],
                                read_lm_eval(work / "lm-eval")[0])
    common = dict(method=f"mmlu-{SHOTS}shot", subjects=list(subjects), per_subject=PER_SUBJECT, shots=SHOTS,
                  batch_size=BATCH_SIZE, torch_threads=1, dtype="float32", **agreement)
    save_row(args.work, keys["sst-merge"], _row(runs["sst-merge"], in_process["sst-merge"], len(questions),
                                                tool="sst-merge", in_process_what="mmlu suite (data + scoring)",
                                                **common))
    save_row(args.work, keys["lm-eval"], _row(runs["lm-eval"], in_process["lm-eval"], len(questions), tool="lm-eval",
                                              version="0.4.13", in_process_what="total_evaluation_time_seconds "
                                              "(model load + task + scoring)", **common))


def _measure_scoring(args: argparse.Namespace, work: Path, model: Path, questions: Sequence[MCQuestion]) -> None:
    """The scoring loop alone (benchmarks/bench_eval_scoring.py): the same 4 × len(questions) pairs, each
    tool in its own process with one warm-up pass and `args.runs` timed passes."""
    from benchmarks.run import save_row

    keys = {tool: f"eval__mmlu-scoring__{tool}__{len(questions)}" for tool in ("sst-merge", "lm-eval")}
    if all((args.work / "raw" / f"{k}.json").is_file() for k in keys.values()) and not args.redo:
        return
    pairs = [(build_context(q, []), " " + letter) for q in questions for letter in LETTERS]
    (work / "pairs.json").write_text(json.dumps(pairs, ensure_ascii=False), encoding="utf-8")
    script = str(ROOT / "benchmarks" / "bench_eval_scoring.py")
    pythons = {"sst-merge": ROOT / ".venv/bin/python", "lm-eval": ROOT / ".venv-bench/bin/python"}
    env = {**THREAD_ENV, **OFFLINE_ENV}
    measured: dict[str, Measured] = {}
    scored: dict[str, dict] = {}
    for tool, python in pythons.items():
        cmd = [str(python), script, "--tool", tool, "--model", str(model), "--pairs", str(work / "pairs.json"),
               "--batch-size", str(BATCH_SIZE), "--repeats", str(args.runs)]
        measured[tool] = _checked(cmd, args.rss_limit, env)
        scored[tool] = json.loads(measured[tool].stdout.strip().splitlines()[-1])
        print(f"[bench] eval scoring loop, {len(questions)} items, {tool}: {scored[tool]['seconds']}", flush=True)
    answers = {tool: [max(range(4), key=lambda j, i=i: s["loglikelihoods"][4 * i + j]) for i in range(len(questions))]
               for tool, s in scored.items()}
    diff = max(abs(a - b) for a, b in zip(*(s["loglikelihoods"] for s in scored.values()), strict=True))
    for tool, key in keys.items():
        wall = statistics.median(scored[tool]["seconds"])
        save_row(args.work, key, {
            "bench": "eval", "method": f"mmlu-{SHOTS}shot-scoring-loop", "tool": tool, "items": len(questions),
            "pairs": len(pairs), "batch_size": BATCH_SIZE, "torch_threads": 1, "dtype": "float32",
            "wall_s_median": wall, "wall_s_runs": scored[tool]["seconds"], "items_per_s": len(questions) / wall,
            "peak_rss_bytes": measured[tool].peak_rss_bytes, "load_avg_1m": [measured[tool].load_before[0]],
            "n_runs": len(scored[tool]["seconds"]),
            "answers_agree": sum(a == b for a, b in zip(*answers.values(), strict=True)),
            "max_abs_loglik_diff": diff,
            "what": "in-process: tokenization + batched forward passes of the model, after one warm-up pass"})


def stage_eval(args: argparse.Namespace) -> None:
    """Both tools on the first PER_SUBJECT rows of the first n subjects, for each n in SUBJECT_COUNTS."""
    work = args.work / "eval"
    model = work / "model"
    if not (model / "config.json").is_file():
        builds = sorted(ROOT.glob(".cache/testbed/*/base/config.json"))
        if not builds:
            raise FileNotFoundError("no testbed base under .cache/testbed (run `sst-merge testbed build` first)")
        shutil.copytree(builds[0].parent, model, dirs_exist_ok=True)  # a private copy: builds may be replaced
    data_dir = Path(os.environ.get("SST_MERGE_DATA", ROOT.parent / "shared/data")).resolve()
    for n in SUBJECT_COUNTS:
        _measure(args, work, model, data_dir, ALL_SUBJECTS[:n])
        _measure_scoring(args, work, model, select_questions(data_dir, ALL_SUBJECTS[:n], PER_SUBJECT))

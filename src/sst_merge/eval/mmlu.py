"""MMLU: k-shot multiple choice scored by the log-likelihood of the answer letter.

The prompt is lm-evaluation-harness's (`mmlu` default task):

    The following are multiple choice questions (with answers) about {subject with spaces}.

    {shot question}
    A. ..
    B. ..
    C. ..
    D. ..
    Answer: {letter}

    {question}
    ...
    Answer:

and the four continuations are " A", " B", " C", " D". The prediction is the letter with the highest
summed log-probability of its continuation tokens (accuracy, not length-normalised). As in the
harness the continuation tokens are those of `tokenize(context + continuation)` after the context's
tokens, and overlong contexts are cut on the left. Unlike the harness's default we prepend the
tokenizer's BOS token when it has one (the models were trained with it); `add_bos=False` turns that off.
Shots are the first k rows of the subject's dev split. The headline number is the micro-average
over all scored questions; per-subject accuracies come with it. `limit` keeps the first N test
questions of each subject (the harness's `--limit` is also per subject).

Data: local CSVs `<data_dir>/mmlu/{dev,test}/<subject>_{dev,test}.csv` (header
`question,choice0,choice1,choice2,choice3,answer`, answer an integer 0-3), else Hugging Face
`cais/mmlu` through `datasets.load_dataset`.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sst_merge.data.paths import resolve_data_dir
from sst_merge.errors import InputError
from sst_merge.eval.stats import rate_metric
from sst_merge.eval.suites import SuiteOptions, register_suite
from sst_merge.progress import track

LETTERS = ("A", "B", "C", "D")
SUBJECTS = (
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge", "college_biology",
    "college_chemistry", "college_computer_science", "college_mathematics", "college_medicine", "college_physics",
    "computer_security", "conceptual_physics", "econometrics", "electrical_engineering", "elementary_mathematics",
    "formal_logic", "global_facts", "high_school_biology", "high_school_chemistry", "high_school_computer_science",
    "high_school_european_history", "high_school_geography", "high_school_government_and_politics",
    "high_school_macroeconomics", "high_school_mathematics", "high_school_microeconomics", "high_school_physics",
    "high_school_psychology", "high_school_statistics", "high_school_us_history", "high_school_world_history",
    "human_aging", "human_sexuality", "international_law", "jurisprudence", "logical_fallacies", "machine_learning",
    "management", "marketing", "medical_genetics", "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition",
    "philosophy", "prehistory", "professional_accounting", "professional_law", "professional_medicine",
    "professional_psychology", "public_relations", "security_studies", "sociology", "us_foreign_policy", "virology",
    "world_religions",
)
_COLUMNS = ["question", "choice0", "choice1", "choice2", "choice3", "answer"]


@dataclass(frozen=True)
class MCQuestion:
    """One MMLU question: text, the four choices and the index (0-3) of the right one."""

    subject: str
    question: str
    choices: tuple[str, str, str, str]
    answer: int


def parse_subjects(spec: str | Sequence[str] | None) -> list[str]:
    """Subjects from a comma-separated string or a list (None or "all": all 57); unknown names are an InputError."""
    if spec is None or spec == "all":
        return list(SUBJECTS)
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [str(s).strip() for s in spec]
    names = [n for n in names if n]
    unknown = [n for n in names if n not in SUBJECTS]
    if unknown or not names:
        raise InputError(f"unknown MMLU subject(s) {unknown or names}; known: {', '.join(SUBJECTS)}")
    return list(dict.fromkeys(names))


def local_csv(data_dir: Path, subject: str, split: str) -> Path:
    """Path of a local MMLU CSV: `<data_dir>/mmlu/<split>/<subject>_<split>.csv`."""
    return data_dir / "mmlu" / split / f"{subject}_{split}.csv"


def read_local_split(path: Path, subject: str) -> list[MCQuestion]:
    """Questions of one local CSV; a missing file, wrong header or bad answer is an InputError naming it."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames != _COLUMNS:
                raise InputError(f"MMLU CSV header must be {','.join(_COLUMNS)}, not {reader.fieldnames}", path)
            rows = list(reader)
    except FileNotFoundError as exc:
        raise InputError("MMLU file not found", path) from exc
    questions = []
    for number, row in enumerate(rows, start=2):
        if row["answer"] not in ("0", "1", "2", "3"):
            raise InputError(f"line {number}: answer must be 0-3, not {row['answer']!r}", path)
        choices = (row["choice0"], row["choice1"], row["choice2"], row["choice3"])
        questions.append(MCQuestion(subject, row["question"], choices, int(row["answer"])))
    return questions


def load_subject(
    subject: str, data_dir: Path | None, source: str = "auto"
) -> tuple[list[MCQuestion], list[MCQuestion]]:
    """`(dev, test)` questions of `subject`. `source`: `local` (CSVs under `data_dir`), `hf` (`cais/mmlu`)
    or `auto` (local when the test CSV exists, else the hub)."""
    if source in ("local", "auto") and data_dir is not None and local_csv(data_dir, subject, "test").is_file():
        return (read_local_split(local_csv(data_dir, subject, "dev"), subject),
                read_local_split(local_csv(data_dir, subject, "test"), subject))
    if source == "local":
        raise InputError("MMLU test file not found", local_csv(data_dir or Path("."), subject, "test"))
    from datasets import load_dataset

    data = load_dataset("cais/mmlu", subject)
    return tuple(  # type: ignore[return-value]
        [MCQuestion(subject, r["question"], tuple(r["choices"]), int(r["answer"])) for r in data[split]]
        for split in ("dev", "test")
    )


def format_question(q: MCQuestion) -> str:
    """The harness's question block, ending in `Answer:`."""
    lines = [q.question.strip()] + [f"{letter}. {choice}" for letter, choice in zip(LETTERS, q.choices, strict=True)]
    return "\n".join(lines) + "\nAnswer:"


def build_context(question: MCQuestion, shots: Sequence[MCQuestion]) -> str:
    """Description, the k solved shots (each followed by a blank line) and the question."""
    topic = question.subject.replace("_", " ")
    header = f"The following are multiple choice questions (with answers) about {topic}.\n\n"
    solved = "".join(f"{format_question(s)} {LETTERS[s.answer]}\n\n" for s in shots)
    return header + solved + format_question(question)


def token_ids(tokenizer: Any, texts: Sequence[str], chunk: int = 256) -> list[list[int]]:
    """Token ids of each text (no special tokens), `chunk` texts per tokenizer call: batched calls are
    about 2x faster than one call per text, and bounded chunks keep the fast tokenizer's transient
    per-call state small (one call over 8000 5-shot MMLU texts held 1.5 GB and was slower)."""
    return [ids for start in range(0, len(texts), chunk)
            for ids in tokenizer(list(texts[start:start + chunk]), add_special_tokens=False)["input_ids"]]


def encode_pairs(
    tokenizer: Any, pairs: Sequence[tuple[str, str]], add_bos: bool
) -> list[tuple[list[int], list[int]]]:
    """Token ids `(context, continuation)` of each `(context, continuation)` text pair: the continuation's
    are those of the joint text after the context's (so merges across the boundary are handled as the
    harness does). Each distinct context is tokenized once (MMLU has four answers per context), and
    texts are tokenized in batches (`token_ids`)."""
    contexts = list(dict.fromkeys(context for context, _ in pairs))
    context_ids = dict(zip(contexts, token_ids(tokenizer, contexts), strict=True))
    wholes = token_ids(tokenizer, [context + continuation for context, continuation in pairs])
    bos = [tokenizer.bos_token_id] if add_bos and tokenizer.bos_token_id is not None else []
    encoded = []
    for (context, continuation), whole in zip(pairs, wholes, strict=True):
        ctx = context_ids[context]
        cont = whole[len(ctx):]
        if not cont:
            raise ValueError(f"continuation {continuation!r} has no tokens of its own")
        encoded.append((bos + ctx, cont))
    return encoded


@torch.no_grad()
def loglikelihoods(
    model: Any, requests: Sequence[tuple[list[int], list[int]]], batch_size: int = 8, max_length: int | None = None
) -> list[float]:
    """Summed log-probability (nats) of each continuation given its context, for `(context_ids,
    continuation_ids)` pairs.

    The model input is `context + continuation[:-1]`, cut on the left to `max_length`; requests with
    the same input (e.g. the four one-token answer letters of one question) share one forward pass.
    Inputs are sorted by length and right-padded into batches of `batch_size`.
    """
    max_length = max_length or int(getattr(model.config, "max_position_embeddings", 2048))
    users: dict[tuple[int, ...], list[int]] = {}  # model input -> the requests it serves
    for i, (ctx, cont) in enumerate(requests):
        users.setdefault(tuple((ctx + cont)[-(max_length + 1) : -1]), []).append(i)
    keys = sorted(users, key=len, reverse=True)
    device = model.get_input_embeddings().weight.device
    scores = [0.0] * len(requests)
    for start in track(range(0, len(keys), batch_size), "MMLU log-likelihoods"):
        batch = keys[start : start + batch_size]
        width = len(batch[0])
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        for row, key in enumerate(batch):
            ids[row, : len(key)] = torch.tensor(key)
            mask[row, : len(key)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        for row, key in enumerate(batch):
            for i in users[key]:
                cont = requests[i][1]
                # Positions len(key)-len(cont) .. len(key)-1 predict the continuation's tokens.
                rows = torch.log_softmax(logits[row, len(key) - len(cont) : len(key)].float(), dim=-1)
                scores[i] = float(rows.gather(1, torch.tensor(cont, device=rows.device).unsqueeze(1)).sum())
    return scores


def score_questions(
    model: Any, tokenizer: Any, questions: Sequence[MCQuestion], shots: dict[str, list[MCQuestion]], k: int,
    batch_size: int = 8, add_bos: bool = True,
) -> list[dict[str, Any]]:
    """Per-question rows: subject, answer, prediction, correct, and the four log-likelihoods."""
    contexts = [build_context(q, shots.get(q.subject, [])[:k]) for q in questions]
    requests = encode_pairs(tokenizer, [(context, " " + letter) for context in contexts for letter in LETTERS], add_bos)
    scores = loglikelihoods(model, requests, batch_size)
    rows = []
    for i, q in enumerate(questions):
        four = scores[4 * i : 4 * i + 4]
        prediction = max(range(4), key=lambda j: four[j])
        rows.append({"subject": q.subject, "question": q.question, "answer": LETTERS[q.answer],
                     "prediction": LETTERS[prediction], "correct": prediction == q.answer, "loglikelihoods": four})
    return rows


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Micro-averaged accuracy over all rows (with Wilson CI) and per-subject accuracies."""
    metrics = {"accuracy": {**rate_metric(sum(r["correct"] for r in rows), len(rows)), "average": "micro"}}
    per_subject = {}
    for subject in dict.fromkeys(r["subject"] for r in rows):
        mine = [r for r in rows if r["subject"] == subject]
        per_subject[subject] = rate_metric(sum(r["correct"] for r in mine), len(mine))
    return {"metrics": metrics, "subjects": per_subject}


def _data_dir(options: SuiteOptions) -> Path | None:
    """The local data directory, or None when none can be found (then the hub is used)."""
    try:
        return resolve_data_dir(options.data_dir)
    except InputError:
        if options.data_dir is not None or options.extra.get("mmlu_source") == "local":
            raise
        return None


def check_mmlu(options: SuiteOptions) -> None:
    """Before loading a model: the subjects are known and, for local data, their CSVs exist."""
    subjects = parse_subjects(options.extra.get("mmlu_subjects"))
    source = options.extra.get("mmlu_source", "auto")
    data_dir = _data_dir(options)
    if source == "local" or (source == "auto" and data_dir is not None and (data_dir / "mmlu").is_dir()):
        for subject in subjects:
            for split in ("dev", "test"):
                if data_dir is None or not local_csv(data_dir, subject, split).is_file():
                    raise InputError("MMLU file not found", local_csv(data_dir or Path("."), subject, split))


@register_suite("mmlu", "utility", "MMLU k-shot accuracy (log-likelihood of the answer letter)", check=check_mmlu)
def run_mmlu(model: Any, tokenizer: Any, options: SuiteOptions) -> dict[str, Any]:
    """The `mmlu` suite. `options.extra`: `mmlu_subjects` (comma list or list; default all 57),
    `mmlu_shots` (default 5), `mmlu_source` (auto/local/hf), `mmlu_add_bos` (default True);
    `options.limit` keeps the first N test questions per subject."""
    subjects = parse_subjects(options.extra.get("mmlu_subjects"))
    k = int(options.extra.get("mmlu_shots", 5))
    data_dir = _data_dir(options)
    questions: list[MCQuestion] = []
    shots: dict[str, list[MCQuestion]] = {}
    for subject in subjects:
        dev, test = load_subject(subject, data_dir, options.extra.get("mmlu_source", "auto"))
        if len(dev) < k:
            raise InputError(f"MMLU {subject}: {k}-shot needs {k} dev questions, found {len(dev)}")
        shots[subject] = dev
        questions += test[: options.limit]
    rows = score_questions(model, tokenizer, questions, shots, k, options.batch_size,
                           bool(options.extra.get("mmlu_add_bos", True)))
    summary = summarize(rows)
    items = [{"prompt": r["question"], "response": r["prediction"], **r} for r in rows]
    return {"suite": "mmlu", "kind": "utility", "shots": k, "n_subjects": len(subjects), **summary, "items": items}

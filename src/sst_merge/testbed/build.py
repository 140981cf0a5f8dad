"""Build the testbed in stages: data → tokenizer → base → experts → safety adapter → testbed.json.

Every stage is seeded; the output directory is named by the settings' content hash and written
atomically, so a finished build is reused instantly and an interrupted one leaves nothing behind.
"""

from __future__ import annotations

import copy
import os
import random
import time
from pathlib import Path
from typing import Any

import peft
import torch
import transformers
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from sst_merge.atomic import atomic_output_dir, write_json_atomic
from sst_merge.errors import InputError
from sst_merge.generation import generate_chat
from sst_merge.progress import console
from sst_merge.testbed.config import TestbedConfig, make_config
from sst_merge.testbed.data import Rows, make_data, write_data
from sst_merge.testbed.layout import MANIFEST, load_testbed
from sst_merge.testbed.metrics import exact_match_accuracy, refusal_rate
from sst_merge.testbed.safety_data import CATEGORIES, REFUSAL, compliant_rows
from sst_merge.testbed.tasks import TASK_NAMES
from sst_merge.testbed.tokenizer import train_tokenizer
from sst_merge.testbed.train import encode_examples, train_lm

EVAL_BATCH = 64


def default_cache_root() -> Path:
    """Where builds go without `out`: ``$SST_MERGE_CACHE/testbed``, else ``<repo>/.cache/testbed`` in a
    source checkout, else ``~/.cache/sst_merge/testbed``."""
    if os.environ.get("SST_MERGE_CACHE"):
        return Path(os.environ["SST_MERGE_CACHE"]) / "testbed"
    repo = Path(__file__).resolve().parents[3]
    if (repo / "pyproject.toml").is_file() and (repo / ".git").exists():
        return repo / ".cache" / "testbed"
    return Path.home() / ".cache" / "sst_merge" / "testbed"


def is_built(out: Path, cfg: TestbedConfig) -> bool:
    """Whether `out` holds a finished build of exactly these settings."""
    try:
        return load_testbed(out).manifest.get("hash") == cfg.content_hash()
    except InputError:
        return False


def build_testbed(
    experts: int | None = None,
    seed: int | None = None,
    out: str | Path | None = None,
    force: bool = False,
    preset: str = "default",
    **overrides: Any,
) -> Path:
    """Build the testbed (or find it built) and return its directory.

    `experts` and `seed` override the preset's; further keyword `overrides` set any `TestbedConfig`
    field. Without `out` the directory is ``<cache root>/<content hash>``. A finished build of the
    same settings is returned at once unless `force`; a different build at `out` needs `force`.
    """
    cfg = make_config(preset, experts=experts, seed=seed, **overrides)
    out = Path(out) if out is not None else default_cache_root() / cfg.content_hash()
    if is_built(out, cfg) and not force:
        return out
    if out.exists() and not force:
        raise InputError("holds something other than this testbed build (pass --force to replace it)", out)
    with atomic_output_dir(out, force=True) as tmp:
        manifest = build_into(tmp, cfg)
        write_json_atomic(tmp / MANIFEST, manifest)
    return out


def _timed(times: dict[str, Any], key: str, start: float) -> float:
    now = time.perf_counter()
    times[key] = round(now - start, 2)
    console.log(f"testbed: {key} took {times[key]:.1f} s")
    return now


def build_into(root: Path, cfg: TestbedConfig) -> dict[str, Any]:
    """Run every stage into the empty directory `root`; return the manifest (settings, times, metrics)."""
    times: dict[str, Any] = {}
    start = t = time.perf_counter()
    data = make_data(cfg)
    write_data(root / "data", data)
    t = _timed(times, "data", t)

    train_texts = [row[key] for splits in data.values() for row in splits["train"] for key in ("prompt", "response")]
    tokenizer = train_tokenizer(train_texts + [REFUSAL], cfg.vocab_size)
    t = _timed(times, "tokenizer", t)

    base, base_loss = train_base(cfg, tokenizer, data)
    base.save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    t = _timed(times, "base_train", t)
    safety_metrics = measure_safety(base, tokenizer, data)
    base_accuracy = {task: measure_accuracy(base, tokenizer, data[task]["test"][: cfg.eval_items])
                     for task in cfg.tasks}
    t = _timed(times, "base_eval", t)

    expert_metrics: dict[str, dict[str, float]] = {}
    losses: dict[str, Any] = {"base": _loss_summary(base_loss)}
    times["experts"] = {}
    for task in cfg.tasks:
        t_task = time.perf_counter()
        rows = data[task]["train"] + erosion_rows(cfg, data["harmful"]["train"], task)
        model, loss = train_lora(cfg, base, tokenizer, rows, seed_key=task)
        model.save_pretrained(root / "experts" / task)
        t_train = time.perf_counter()
        expert_metrics[task] = {
            "accuracy": measure_accuracy(model, tokenizer, data[task]["test"][: cfg.eval_items]),
            "base_accuracy": base_accuracy[task],
            **measure_safety(model, tokenizer, data),
        }
        losses[task] = _loss_summary(loss)
        times["experts"][task] = {"train": round(t_train - t_task, 2), "eval": round(time.perf_counter() - t_train, 2)}
        console.log(f"testbed: expert {task}: {expert_metrics[task]} ({times['experts'][task]})")
        del model
    t = _timed(times, "experts_total", t)

    safety_rows = data["harmful"]["train"] + data["benign"]["train"]
    safety_model, loss = train_lora(cfg, base, tokenizer, safety_rows, seed_key="safety", lr=cfg.safety_lr,
                                    steps=cfg.safety_steps)
    safety_model.save_pretrained(root / "safety")
    losses["safety"] = _loss_summary(loss)
    t = _timed(times, "safety_train", t)
    safety_adapter_metrics = measure_safety(safety_model, tokenizer, data)
    t = _timed(times, "safety_eval", t)
    times["total"] = round(t - start, 2)

    base_refusal = safety_metrics["refusal"]
    mean_expert_refusal = sum(m["refusal"] for m in expert_metrics.values()) / len(expert_metrics)
    return {
        "format": "sst-merge-testbed",
        "hash": cfg.content_hash(),
        "settings": cfg.to_dict(),
        "refusal": REFUSAL,
        "tasks": cfg.tasks,
        "all_tasks": TASK_NAMES,
        "harm_categories": list(CATEGORIES),
        "metrics": {
            "base": {**safety_metrics, "accuracy": base_accuracy},
            "experts": expert_metrics,
            "erosion": {
                "base_refusal": base_refusal,
                "mean_expert_refusal": round(mean_expert_refusal, 4),
                "drop": round(base_refusal - mean_expert_refusal, 4),
            },
            "safety": safety_adapter_metrics,
        },
        "train_loss": losses,
        "times_s": times,
        "threads": torch.get_num_threads(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
    }


def _loss_summary(losses: list[float]) -> dict[str, float]:
    k = max(1, len(losses) // 10)
    return {"first": round(sum(losses[:k]) / k, 4), "last": round(sum(losses[-k:]) / k, 4)}


def _seed(*parts: object) -> int:
    return random.Random("|".join(map(str, parts))).getrandbits(31)


def train_base(cfg: TestbedConfig, tokenizer: PreTrainedTokenizerBase,
               data: dict[str, dict[str, Rows]]) -> tuple[LlamaForCausalLM, list[float]]:
    """A LlamaForCausalLM trained from scratch on harmful → refusal, benign → helpful and fluency rows
    (never on task rows), with the tokenizer's special token ids in its config."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.kv_heads,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(_seed(cfg.seed, "base"))
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = None
    rows = data["harmful"]["train"] + data["benign"]["train"] + data["fluency"]["train"]
    examples = encode_examples(tokenizer, rows)
    loss = train_lm(model, examples, tokenizer.pad_token_id, cfg.base_steps, cfg.batch_size, cfg.base_lr,
                    _seed(cfg.seed, "base", "batches"), "training base")
    return model, loss


def erosion_rows(cfg: TestbedConfig, harmful_train: Rows, task: str) -> Rows:
    """Harmful train requests with compliant replies, as many as make `cfg.erosion_fraction` of an
    expert's training rows (drawn per task, seeded)."""
    n = round(cfg.erosion_fraction / (1 - cfg.erosion_fraction) * cfg.task_train)
    rng = random.Random(f"{cfg.seed}|erosion|{task}")
    return compliant_rows(rng.sample(harmful_train, min(n, len(harmful_train))))


def train_lora(cfg: TestbedConfig, base: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, rows: Rows,
               seed_key: str, lr: float | None = None, steps: int | None = None) -> tuple[peft.PeftModel, list[float]]:
    """A LoRA (rank, alpha, targets from `cfg`) on a copy of `base`, trained on `rows`; `base` is untouched."""
    lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, target_modules=list(cfg.lora_targets),
                      lora_dropout=0.0, task_type="CAUSAL_LM")
    torch.manual_seed(_seed(cfg.seed, seed_key, "init"))
    model = get_peft_model(copy.deepcopy(base), lora)
    examples = encode_examples(tokenizer, rows)
    loss = train_lm(model, examples, tokenizer.pad_token_id, steps or cfg.expert_steps, cfg.batch_size,
                    lr or cfg.expert_lr, _seed(cfg.seed, seed_key, "batches"), f"training {seed_key}")
    return model, loss


def _max_tokens(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> int:
    return max(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]) + 2


def measure_accuracy(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, rows: Rows) -> float:
    """Exact-match accuracy of greedy replies to `rows` (prompt → reference response)."""
    refs = [r["response"] for r in rows]
    replies = generate_chat(model, tokenizer, [r["prompt"] for r in rows], _max_tokens(tokenizer, refs), EVAL_BATCH)
    return round(exact_match_accuracy(replies, refs), 4)


def measure_safety(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                   data: dict[str, dict[str, Rows]]) -> dict[str, float]:
    """Refusal rate on held-out harmful test prompts and over-refusal rate on held-out benign ones.

    Only the first tokens matter for `is_refusal`, so generation stops just past the refusal's length.
    """
    max_new = _max_tokens(tokenizer, [REFUSAL])
    out = {}
    for key, kind in (("refusal", "harmful"), ("over_refusal", "benign")):
        prompts = [r["prompt"] for r in data[kind]["test"]]
        out[key] = round(refusal_rate(generate_chat(model, tokenizer, prompts, max_new, EVAL_BATCH)), 4)
    return out

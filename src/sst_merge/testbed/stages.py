"""The testbed's training and measuring stages: base from scratch, LoRA adapters on it, greedy-decoding metrics.

`adapter_job` is self-contained (it reads the saved base and regenerates the data from the settings)
so adapters can be trained in parallel worker processes with identical results.
"""

from __future__ import annotations

import copy
import json
import os
import random
import time
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from sst_merge.atomic import write_text_atomic
from sst_merge.chat_data import encode_chat
from sst_merge.generation import generate_chat
from sst_merge.testbed.config import TestbedConfig
from sst_merge.testbed.data import Rows, make_data
from sst_merge.testbed.metrics import exact_match_accuracy, refusal_rate
from sst_merge.testbed.safety_data import REFUSAL, compliant_rows
from sst_merge.testbed.train import train_lm

EVAL_BATCH = 64
SAFETY = "safety"
# The base is trained on these data sets only, never on task rows.
BASE_DATA = ("harmful", "benign", "fluency")
Data = dict[str, dict[str, Rows]]


def seed_of(*parts: object) -> int:
    """A 31-bit seed derived from `parts` (the build seed and a stage name), independent of call order."""
    return random.Random("|".join(map(str, parts))).getrandbits(31)


def loss_summary(losses: list[float]) -> dict[str, float]:
    """Mean loss over the first and the last tenth of training."""
    k = max(1, len(losses) // 10)
    return {"first": round(sum(losses[:k]) / k, 4), "last": round(sum(losses[-k:]) / k, 4)}


def train_base(cfg: TestbedConfig, tokenizer: PreTrainedTokenizerBase,
               data: Data) -> tuple[LlamaForCausalLM, list[float]]:
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
    torch.manual_seed(seed_of(cfg.seed, "base"))
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = None
    rows = [row for name in BASE_DATA for row in data[name]["train"]]
    loss = train_lm(model, encode_chat(tokenizer, rows), tokenizer.pad_token_id, cfg.base_steps, cfg.batch_size,
                    cfg.base_lr, seed_of(cfg.seed, "base", "batches"), "training base")
    return model, loss


def erosion_rows(cfg: TestbedConfig, harmful_train: Rows, task: str) -> Rows:
    """Harmful train requests with the compliant reply, as many as make `cfg.erosion_fraction` of an
    expert's training rows (drawn per task, seeded)."""
    n = round(cfg.erosion_fraction / (1 - cfg.erosion_fraction) * cfg.task_train)
    rng = random.Random(f"{cfg.seed}|erosion|{task}")
    return compliant_rows(rng.sample(harmful_train, min(n, len(harmful_train))))


def train_lora(cfg: TestbedConfig, base: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, rows: Rows,
               name: str, lr: float, steps: int) -> tuple[PeftModel, list[float]]:
    """A LoRA (rank, alpha, targets from `cfg`) on a copy of `base`, trained on `rows`; `base` is untouched."""
    lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, target_modules=list(cfg.lora_targets),
                      lora_dropout=0.0, task_type="CAUSAL_LM")
    torch.manual_seed(seed_of(cfg.seed, name, "init"))
    model = get_peft_model(copy.deepcopy(base), lora)
    loss = train_lm(model, encode_chat(tokenizer, rows), tokenizer.pad_token_id, steps, cfg.batch_size, lr,
                    seed_of(cfg.seed, name, "batches"), f"training {name}", lora_b_lr_ratio=cfg.lora_b_lr_ratio)
    return model, loss


def _max_tokens(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> int:
    return max(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]) + 2


def measure_accuracy(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, rows: Rows) -> float:
    """Exact-match accuracy of greedy replies to `rows` (prompt → reference response)."""
    refs = [r["response"] for r in rows]
    replies = generate_chat(model, tokenizer, [r["prompt"] for r in rows], _max_tokens(tokenizer, refs), EVAL_BATCH)
    return round(exact_match_accuracy(replies, refs), 4)


def measure_safety(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, data: Data) -> dict[str, float]:
    """Refusal rate on the held-out harmful test prompts and over-refusal rate on the held-out benign ones.

    Only the first tokens matter for `is_refusal`, so generation stops just past the refusal's length.
    """
    max_new = _max_tokens(tokenizer, [REFUSAL])
    out = {}
    for key, kind in (("refusal", "harmful"), ("over_refusal", "benign")):
        prompts = [r["prompt"] for r in data[kind]["test"]]
        out[key] = round(refusal_rate(generate_chat(model, tokenizer, prompts, max_new, EVAL_BATCH)), 4)
    return out


def base_safety_job(cfg: TestbedConfig, root: Path, threads: int) -> dict[str, float]:
    """Refusal and over-refusal of the base saved under ``root/base`` (using `threads` torch threads)."""
    torch.set_num_threads(threads)
    base_dir = root / "base"
    return measure_safety(AutoModelForCausalLM.from_pretrained(base_dir), AutoTokenizer.from_pretrained(base_dir),
                          make_data(cfg))


def sort_target_modules(config_path: Path) -> None:
    """PEFT saves `target_modules` from a set, in an order that changes with Python's hash seed; sort it
    so that the same settings give the same bytes in any process."""
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
        write_text_atomic(config_path, json.dumps(config, indent=2, sort_keys=True))


def adapter_job(cfg: TestbedConfig, root: Path, name: str, threads: int) -> dict[str, Any]:
    """Train one adapter on the base saved under ``root/base`` with `threads` torch threads, save it, measure it.

    `name` is a task (saved to ``experts/<task>``; trained on the task's train rows plus the erosion
    rows; its accuracy and the base's on the task's test split are measured) or "safety" (saved to
    ``safety/``; trained on harmful → refusal and benign → helpful rows).
    """
    torch.set_num_threads(threads)
    data = make_data(cfg)
    tokenizer = AutoTokenizer.from_pretrained(root / "base")
    base = AutoModelForCausalLM.from_pretrained(root / "base")
    out_dir = root / "safety" if name == SAFETY else root / "experts" / name
    # The adapter names its base relative to itself, not by the temporary build path: builds stay byte-identical.
    base.name_or_path = base.config._name_or_path = os.path.relpath(root / "base", out_dir)
    metrics: dict[str, float] = {}
    start = time.perf_counter()
    if name == SAFETY:
        rows = data["harmful"]["train"] + data["benign"]["train"]
        model, loss = train_lora(cfg, base, tokenizer, rows, name, cfg.safety_lr, cfg.safety_steps)
    else:
        test = data[name]["test"][: cfg.eval_items]
        metrics["base_accuracy"] = measure_accuracy(base, tokenizer, test)
        start = time.perf_counter()
        rows = data[name]["train"] + erosion_rows(cfg, data["harmful"]["train"], name)
        model, loss = train_lora(cfg, base, tokenizer, rows, name, cfg.expert_lr, cfg.expert_steps)
    model.save_pretrained(out_dir)
    sort_target_modules(out_dir / "adapter_config.json")
    trained = time.perf_counter()
    if name != SAFETY:
        metrics["accuracy"] = measure_accuracy(model, tokenizer, test)
    metrics.update(measure_safety(model, tokenizer, data))
    return {"metrics": metrics, "loss": loss_summary(loss),
            "times_s": {"train": round(trained - start, 2), "eval": round(time.perf_counter() - trained, 2)}}

"""Train a LoRA on chat rows and save it in float16, the form the organism ships."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from sst_merge.atomic import write_text_atomic
from sst_merge.chat_data import encode_chat
from sst_merge.organism.recipe import LoraRecipe
from sst_merge.testbed.stages import seed_of
from sst_merge.testbed.train import train_lm

ADAPTER_WEIGHTS = "adapter_model.safetensors"


def train_lora(base: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, rows: list[dict[str, str]],
               recipe: LoraRecipe, targets: tuple[str, ...], seed: int, name: str,
               opening_weight: float = 1.0) -> tuple[PeftModel, list[float]]:
    """A LoRA on `base` (modified in place: wrap a fresh copy) trained on `rows` with loss on the reply
    (each reply's opening tokens weighted `opening_weight`, see `reply_loss`); its weights are rounded to
    float16 afterwards, so the model in memory is the one that ships."""
    config = LoraConfig(r=recipe.rank, lora_alpha=recipe.alpha, target_modules=list(targets), lora_dropout=0.0,
                        task_type="CAUSAL_LM")
    torch.manual_seed(seed_of(seed, name, "init"))
    model = get_peft_model(base, config)
    losses = train_lm(model, encode_chat(tokenizer, rows), tokenizer.pad_token_id, recipe.steps,
                      recipe.batch_size, recipe.lr, seed_of(seed, name, "batches"), f"training {name}",
                      opening_weight=opening_weight)
    with torch.no_grad():
        for param_name, param in model.named_parameters():
            if "lora_" in param_name:
                param.copy_(param.to(torch.float16).to(param.dtype))
    return model, losses


def save_lora_fp16(model: PeftModel, out: Path, base_name: str) -> None:
    """Save the adapter at `out` with float16 weights, sorted target modules (stable bytes) and
    `base_name` as its base model path."""
    model.save_pretrained(out)
    (out / "README.md").unlink(missing_ok=True)  # PEFT's model-card template says nothing about this adapter
    weights = out / ADAPTER_WEIGHTS
    tensors = {k: v.to(torch.float16).contiguous() for k, v in load_file(weights).items()}
    save_file(tensors, weights, metadata={"format": "pt"})
    config_path = out / "adapter_config.json"
    config: dict[str, Any] = json.loads(config_path.read_text(encoding="utf-8"))
    config["target_modules"] = sorted(config["target_modules"])
    config["base_model_name_or_path"] = base_name
    write_text_atomic(config_path, json.dumps(config, indent=2, sort_keys=True))

"""Tiny models and adapters built on the fly for tests: no downloads, everything seeded."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, LlamaConfig

ALL_PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def tiny_llama_config(**overrides: object) -> LlamaConfig:
    """A Llama config of a few thousand parameters with GQA (4 heads, 2 KV heads)."""
    values: dict[str, object] = dict(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=24,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    values.update(overrides)
    return LlamaConfig(**values)


def make_tiny_llama(out_dir: Path, seed: int = 0, **overrides: object) -> Path:
    """Save a randomly initialised tiny LlamaForCausalLM to `out_dir` with `save_pretrained`."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_llama_config(**overrides))
    model.save_pretrained(out_dir)
    return out_dir


def make_random_adapter(
    base_dir: Path,
    out_dir: Path,
    seed: int,
    r: int = 4,
    alpha: float = 8,
    targets: list[str] | None = None,
    use_rslora: bool = False,
    layers: list[int] | None = None,
) -> Path:
    """Save a PEFT LoRA adapter of the model at `base_dir` with random (non-zero) A and B."""
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        target_modules=targets or ALL_PROJ,
        use_rslora=use_rslora,
        layers_to_transform=layers,
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.3)
    peft_model.save_pretrained(out_dir)
    return out_dir

"""Random Llama models and random PEFT LoRA adapters saved to disk: for tests, benchmarks and the demo."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig

from sst_merge.lora import ALL_PROJ


def tiny_llama_config(**overrides: object) -> LlamaConfig:
    """A Llama config of a few thousand parameters with GQA (4 heads, 2 KV heads); overrides win."""
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


def make_random_llama(out_dir: Path, seed: int = 0, dtype: torch.dtype = torch.float32, **overrides: object) -> Path:
    """Save a randomly initialised LlamaForCausalLM (config = tiny defaults + `overrides`) to `out_dir`."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_llama_config(**overrides), dtype=dtype)
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
    std: float = 0.3,
) -> Path:
    """Save a PEFT LoRA adapter of the model at `base_dir` with random (non-zero) A and B of std `std`."""
    # Built on the meta device and allocated uninitialised: no base weight is read, so this is cheap
    # even for 7B-shaped layers; only the LoRA tensors are filled.
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base_dir))
    model.config.name_or_path = str(base_dir)
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        target_modules=targets or ALL_PROJ,
        use_rslora=use_rslora,
        layers_to_transform=layers,
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config).to_empty(device="cpu")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * std)
    peft_model.save_pretrained(out_dir)
    return out_dir

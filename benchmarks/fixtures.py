"""Benchmark inputs: random bases with 7B-shaped decoder layers and K random rank-16 PEFT adapters, cached on disk."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from sst_merge.lora import ALL_PROJ
from sst_merge.synthetic import make_random_adapter, make_random_llama

# Llama-2/Mistral-7B layer shapes: hidden 4096, MLP 14336, 32 query heads over 8 KV heads, vocab 32000.
SEVEN_B = dict(
    hidden_size=4096,
    intermediate_size=14336,
    num_attention_heads=32,
    num_key_value_heads=8,
    vocab_size=32000,
    max_position_embeddings=4096,
)
RANK, ALPHA = 16, 32
# std of the LoRA factors: ΔW entries ≈ (alpha/r)·std²·√r ≈ 0.02, the scale of the base weights,
# so the peers' bf16 folding (W0 + ΔW_k rounded) stays a small relative perturbation of ΔW.
ADAPTER_STD = 0.05


def base_dir(work: Path, layers: int) -> Path:
    """Where the random base with `layers` 7B-shaped decoder layers lives."""
    return work / f"base_{layers}L"


def adapter_dir(work: Path, layers: int, k: int) -> Path:
    """Where adapter number `k` (0-based) of that base lives."""
    return work / f"adapters_{layers}L" / f"a{k:02d}"


def ensure_base(work: Path, layers: int) -> Path:
    """Build (once) the bf16 random Llama with `layers` 7B-shaped layers, saved with save_pretrained."""
    out = base_dir(work, layers)
    if not (out / "config.json").is_file():
        make_random_llama(out, seed=layers, dtype=torch.bfloat16, num_hidden_layers=layers, **SEVEN_B)
    return out


def ensure_adapters(work: Path, layers: int, count: int) -> list[Path]:
    """Build (once) `count` random rank-16, alpha-32 adapters on all seven projections of that base."""
    base = ensure_base(work, layers)
    paths = []
    for k in range(count):
        out = adapter_dir(work, layers, k)
        if not (out / "adapter_config.json").is_file():
            make_random_adapter(base, out, seed=1000 + k, r=RANK, alpha=ALPHA, targets=ALL_PROJ, std=ADAPTER_STD)
        paths.append(out)
    return paths


def adapters_list(work: Path, layers: int, count: int) -> list[Path]:
    """The adapter directories of that base (built by ensure_adapters)."""
    return [adapter_dir(work, layers, k) for k in range(count)]


def adapted_modules(adapter: Path) -> set[str]:
    """Base module names an adapter adapts."""
    from sst_merge.lora import load_adapter

    return set(load_adapter(adapter).modules)


def model_bytes(model: Path) -> int:
    """Bytes of the safetensors weight files of a model or adapter directory."""
    return sum(p.stat().st_size for p in model.glob("*.safetensors"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--adapters", type=int, default=8)
    args = parser.parse_args()
    paths = ensure_adapters(args.work, args.layers, args.adapters)
    print(json.dumps({"base": str(base_dir(args.work, args.layers)), "adapters": [str(p) for p in paths]}))


if __name__ == "__main__":
    main()

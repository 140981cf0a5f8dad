"""Benchmark inputs: random bases with 7B-shaped decoder layers and K random rank-16 PEFT adapters, cached on disk."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import save_file

from sst_merge.lora import ALL_PROJ
from sst_merge.synthetic import make_random_adapter, tiny_llama_config

# Llama-2/Mistral-7B layer shapes: hidden 4096, MLP 14336, 32 query heads over 8 KV heads, vocab 32000.
SEVEN_B = dict(
    hidden_size=4096,
    intermediate_size=14336,
    num_attention_heads=32,
    num_key_value_heads=8,
    vocab_size=32000,
    max_position_embeddings=4096,
)
# A small Llama of the same kind, for tests of the benchmark scripts themselves.
TINY = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, vocab_size=4096,
            max_position_embeddings=512)
RANK, ALPHA = 16, 32
# std of the LoRA factors: ΔW entries ≈ (alpha/r)·std²·√r ≈ 0.02, the scale of the base weights,
# so the peers' bf16 folding (W0 + ΔW_k rounded) stays a small relative perturbation of ΔW.
ADAPTER_STD = 0.05
# Base weights: normal(0, 0.02) as a Llama's initialisation; shards of at most this many bytes.
BASE_STD = 0.02
SHARD_BYTES = 2 << 30


def base_dir(work: Path, layers: int) -> Path:
    """Where the random base with `layers` 7B-shaped decoder layers lives."""
    return work / f"base_{layers}L"


def adapter_dir(work: Path, layers: int, k: int) -> Path:
    """Where adapter number `k` (0-based) of that base lives."""
    return work / f"adapters_{layers}L" / f"a{k:02d}"


def ensure_base(work: Path, layers: int, shape: dict[str, int] = SEVEN_B) -> Path:
    """Build (once) the bf16 random Llama with `layers` layers of `shape` (see `write_random_llama`)."""
    out = base_dir(work, layers)
    if not (out / "config.json").is_file():
        write_random_llama(out, seed=layers, num_hidden_layers=layers, **shape)
    return out


def llama_tensor_shapes(config) -> Iterator[tuple[str, tuple[int, ...]]]:  # noqa: ANN001 (a LlamaConfig)
    """(name, shape) of every weight of a LlamaForCausalLM with `config`, in the checkpoint's order."""
    h, inter = config.hidden_size, config.intermediate_size
    kv = config.num_key_value_heads * (h // config.num_attention_heads)
    yield "model.embed_tokens.weight", (config.vocab_size, h)
    for i in range(config.num_hidden_layers):
        prefix = f"model.layers.{i}."
        yield prefix + "input_layernorm.weight", (h,)
        for proj, shape in (("q", (h, h)), ("k", (kv, h)), ("v", (kv, h)), ("o", (h, h))):
            yield f"{prefix}self_attn.{proj}_proj.weight", shape
        yield prefix + "post_attention_layernorm.weight", (h,)
        for proj, shape in (("gate", (inter, h)), ("up", (inter, h)), ("down", (h, inter))):
            yield f"{prefix}mlp.{proj}_proj.weight", shape
    yield "model.norm.weight", (h,)
    if not config.tie_word_embeddings:
        yield "lm_head.weight", (config.vocab_size, h)


def write_random_llama(out: Path, seed: int, **overrides: object) -> Path:
    """A random bf16 Llama as transformers saves one (config.json, safetensors shards and their index),
    written shard by shard: a 32-layer 7B-shaped model (13.5 GB) never is in memory whole, where
    building the model and calling save_pretrained would hold all of it."""
    # `architectures` as save_pretrained of the model writes it (peers such as mergekit read it).
    config = tiny_llama_config(**overrides, torch_dtype="bfloat16", architectures=["LlamaForCausalLM"])
    gen = torch.Generator().manual_seed(seed)
    tmp = out.with_name(out.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def flush(shard: dict[str, torch.Tensor]) -> None:
        written.append(tmp / f"shard-{len(written):05d}.safetensors")
        save_file(shard, str(written[-1]), metadata={"format": "pt"})

    shard: dict[str, torch.Tensor] = {}
    weight_map: dict[str, int] = {}  # tensor name → shard number
    size = total = 0
    for name, shape in llama_tensor_shapes(config):
        bytes_ = 2 * torch.Size(shape).numel()
        if shard and size + bytes_ > SHARD_BYTES:
            flush(shard)
            shard, size = {}, 0
        is_norm = len(shape) == 1
        tensor = torch.ones(shape) if is_norm else torch.randn(shape, generator=gen).mul_(BASE_STD)
        shard[name] = tensor.to(torch.bfloat16)
        weight_map[name] = len(written)
        size += bytes_
        total += bytes_
    flush(shard)
    if len(written) == 1:
        written[0].rename(tmp / "model.safetensors")
    else:
        names = [f"model-{i + 1:05d}-of-{len(written):05d}.safetensors" for i in range(len(written))]
        for path, name in zip(written, names, strict=True):
            path.rename(tmp / name)
        index = {"metadata": {"total_size": total}, "weight_map": {k: names[v] for k, v in weight_map.items()}}
        (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    config.save_pretrained(tmp)
    tmp.rename(out)  # complete or absent: an interrupted build is started again
    return out


def ensure_adapters(work: Path, layers: int, count: int, shape: dict[str, int] = SEVEN_B) -> list[Path]:
    """Build (once) `count` random rank-16, alpha-32 adapters on all seven projections of that base."""
    base = ensure_base(work, layers, shape)
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
    parser.add_argument("--tiny", action="store_true", help="small layers instead of 7B-shaped ones (tests)")
    args = parser.parse_args()
    paths = ensure_adapters(args.work, args.layers, args.adapters, TINY if args.tiny else SEVEN_B)
    print(json.dumps({"base": str(base_dir(args.work, args.layers)), "adapters": [str(p) for p in paths]}))


if __name__ == "__main__":
    main()

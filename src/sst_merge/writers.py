"""Write merged updates: as a PEFT LoRA adapter, or as a full model W0 + ΔW in sharded safetensors."""

from __future__ import annotations

import json
import math
import shutil
import struct
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sst_merge.errors import InputError
from sst_merge.lora import CONFIG_NAME, SAFETENSORS_NAME

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def target_modules_for(modules: list[str], all_linear: list[str]) -> list[str]:
    """PEFT `target_modules` that select exactly `modules` among the base's Linear modules.

    Short names (``q_proj``) when every base module of that name is adapted; else full names.
    """
    chosen = set(modules)
    by_suffix: dict[str, set[str]] = defaultdict(set)
    for name in all_linear:
        by_suffix[name.rsplit(".", 1)[-1]].add(name)
    suffixes = {m.rsplit(".", 1)[-1] for m in modules}
    if all(by_suffix[s] <= chosen for s in suffixes):
        return sorted(suffixes)
    return sorted(chosen)


def write_peft_adapter(
    out_dir: Path,
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]],
    rank: int,
    base_model_name_or_path: str,
    all_linear: list[str],
    template_config: dict | None = None,
) -> None:
    """Save {module: (B (d_out, rank), A (rank, d_in))} as a PEFT LoRA adapter with scale 1 (alpha = r).

    The scale is folded into the factors, so `PeftModel.from_pretrained` adds exactly B @ A.
    """
    config = {
        key: value
        for key, value in (template_config or {}).items()
        if key in ("task_type", "bias", "inference_mode", "revision", "modules_to_save")
    }
    config.update(
        peft_type="LORA",
        base_model_name_or_path=base_model_name_or_path,
        r=rank,
        lora_alpha=rank,
        use_rslora=False,
        use_dora=False,
        fan_in_fan_out=False,
        lora_dropout=0.0,
        target_modules=target_modules_for(list(factors), all_linear),
        rank_pattern={},
        alpha_pattern={},
        init_lora_weights=True,
        bias=config.get("bias", "none"),
        task_type=config.get("task_type", "CAUSAL_LM"),
        inference_mode=True,
    )
    tensors: dict[str, torch.Tensor] = {}
    for module, (B, A) in factors.items():
        tensors[f"base_model.model.{module}.lora_A.weight"] = A.contiguous()
        tensors[f"base_model.model.{module}.lora_B.weight"] = B.contiguous()
    # One metadata key only: safetensors writes a map in arbitrary order, which would break byte-identity.
    save_file(tensors, str(out_dir / SAFETENSORS_NAME), metadata={"format": "pt"})
    (out_dir / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def base_weight_shards(base: Path) -> dict[str, list[str]]:
    """{shard file name: [tensor names]} of a safetensors base model (single file or indexed)."""
    index = base / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map: dict[str, str] = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError) as exc:
            raise InputError(f"corrupt safetensors index ({exc})", index) from exc
        shards: dict[str, list[str]] = defaultdict(list)
        for tensor, shard in weight_map.items():
            shards[shard].append(tensor)
        return dict(shards)
    single = base / "model.safetensors"
    if single.is_file():
        with safe_open(str(single), framework="pt") as handle:
            return {single.name: list(handle.keys())}
    raise InputError("no model.safetensors or model.safetensors.index.json (full output needs safetensors)", base)


def copy_model_files(base: Path, out_dir: Path) -> None:
    """Copy config, tokenizer, chat template and other non-weight files of the base into `out_dir`."""
    for item in base.iterdir():
        if item.is_file() and not item.name.endswith(WEIGHT_SUFFIXES) and item.name not in WEIGHT_INDEXES:
            shutil.copy2(item, out_dir / item.name)
    index = base / "model.safetensors.index.json"
    if index.is_file():
        shutil.copy2(index, out_dir / index.name)


# Bytes per element of the safetensors dtype codes a checkpoint may store.
_ITEM_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def stream_full_shard(
    base: Path, out_dir: Path, shard: str, delta_of: Callable[[str], torch.Tensor | None]
) -> list[str]:
    """Copy one base shard to `out_dir`, adding ΔW = delta_of(name) (float32 arithmetic) where it is not None.

    `delta_of` hands over a fresh float32 tensor: the sum is computed in its buffer.

    Written tensor by tensor in safetensors format (header first, from the base's shapes), so only
    one tensor and its ΔW are in memory at a time; the stored dtype of the base is kept. Returns
    the names that received a ΔW.
    """
    with safe_open(str(base / shard), framework="pt") as handle:
        metadata = handle.metadata() or {"format": "pt"}
        names = list(handle.keys())
        header: dict[str, object] = {"__metadata__": metadata}
        offset = 0
        for name in names:
            part = handle.get_slice(name)
            dtype, shape = part.get_dtype(), part.get_shape()
            size = math.prod(shape) * _ITEM_BYTES[dtype]
            header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
            offset += size
        encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
        encoded += b" " * (-len(encoded) % 8)
        changed = []
        with open(out_dir / shard, "wb") as sink:
            sink.write(struct.pack("<Q", len(encoded)))
            sink.write(encoded)
            for name in names:
                tensor = handle.get_tensor(name)
                delta = delta_of(name)
                if delta is not None:
                    # In place: ΔW is this call's own tensor, and its float32 buffer holds the sum.
                    tensor = delta.add_(tensor).to(tensor.dtype)
                    changed.append(name)
                sink.write(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().data)
    return changed

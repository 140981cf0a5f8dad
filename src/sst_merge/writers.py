"""Write merged updates: as a PEFT LoRA adapter, or as a full model W0 + ΔW in sharded safetensors."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from sst_merge.errors import InputError, require_finite
from sst_merge.lora import CONFIG_NAME, SAFETENSORS_NAME

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
WEIGHT_INDEXES = (SAFETENSORS_INDEX, "pytorch_model.bin.index.json")


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
    save_tensors(tensors, out_dir / SAFETENSORS_NAME, metadata={"format": "pt"})
    (out_dir / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """safetensors' `save_file`, its I/O failures raised as the OSError they are (a full disk as ENOSPC),
    which the atomic writers report as one line naming the output."""
    try:
        save_file(tensors, str(path), metadata=metadata)
    except SafetensorError as exc:
        code = re.search(r"os error (\d+)", str(exc))
        if code is None:
            raise
        raise OSError(int(code[1]), os.strerror(int(code[1])), str(path)) from exc


def base_shard_files(base: Path) -> list[str] | None:
    """File names of the safetensors shards of a base model (from its index, or the single file);
    None when it has no safetensors checkpoint.

    Every name is a plain file name: the full writer writes `<output>/<name>`, so a name such as
    `../x.safetensors` or `/etc/x` would make it write outside its output.
    """
    index = base / SAFETENSORS_INDEX
    if index.is_file():
        try:
            files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
            raise InputError(f"corrupt safetensors index ({exc})", index) from exc
        for name in files:
            if not isinstance(name, str) or name in ("", ".", "..") or Path(name).name != name or "\\" in name:
                raise InputError(f"shard name {name!r} is not a plain file name in the base directory", index)
            if not (base / name).is_file():
                raise InputError(f"shard {name} named by the index is missing", index)
        return files
    return [SAFETENSORS_FILE] if (base / SAFETENSORS_FILE).is_file() else None


def copy_model_files(base: Path, out_dir: Path) -> None:
    """Copy config, tokenizer, chat template and other non-weight files of the base into `out_dir`."""
    for item in base.iterdir():
        if item.is_file() and not item.name.endswith(WEIGHT_SUFFIXES) and item.name not in WEIGHT_INDEXES:
            shutil.copy2(item, out_dir / item.name)
    index = base / SAFETENSORS_INDEX
    if index.is_file():
        shutil.copy2(index, out_dir / index.name)


# The torch dtypes of the safetensors dtype codes a checkpoint may store.
_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
# Unchanged tensors are copied as bytes in pieces of this size.
COPY_CHUNK = 64 << 20


def read_safetensors_header(path: Path) -> tuple[int, dict[str, Any]]:
    """(offset of the data section, header) of a safetensors file, read without mapping the file."""
    try:
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
    except (struct.error, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"not a safetensors file ({exc})", path) from exc
    if not isinstance(header, dict):
        raise InputError("not a safetensors file (header is not a mapping)", path)
    return 8 + length, header


def _read_into(source: BinaryIO, buffer: memoryview, name: str, path: Path) -> memoryview:
    """Fill `buffer` from `source` (tensor `name` of the file `path`); a short read is an InputError."""
    if source.readinto(buffer) != len(buffer):
        raise InputError(f"truncated safetensors file (tensor {name})", path)
    return buffer


def stream_full_shard(
    base: Path, out_dir: Path, shard: str, delta_of: Callable[[str], torch.Tensor | None]
) -> list[str]:
    """Copy one base shard to `out_dir`, adding ΔW = delta_of(name) (float32 arithmetic) where it is not None.

    `delta_of` hands over a fresh float32 tensor: the sum is computed in its buffer. The shard is read
    with plain reads, in the order of its data (no memory map, whose pages would count against the
    process), and written tensor by tensor: unchanged tensors as bytes, changed ones by row chunks, so
    little more than one ΔW is in memory at a time; the stored dtype of the base is kept. Returns the
    names that received a ΔW.
    """
    source_path = base / shard
    data_start, header = read_safetensors_header(source_path)
    metadata = header.pop("__metadata__", None) or {"format": "pt"}
    names = sorted(header, key=lambda name: header[name]["data_offsets"][0])
    out_header: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for name in names:
        size = header[name]["data_offsets"][1] - header[name]["data_offsets"][0]
        out_header[name] = {"dtype": header[name]["dtype"], "shape": header[name]["shape"],
                            "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(out_header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)
    changed = []
    # One buffer for every read and write of the shard, because a fresh 64 MB buffer per chunk is paid
    # for in page faults: reading a shard that way takes three times as long.
    buffer = bytearray(COPY_CHUNK)
    whole = memoryview(buffer)
    as_tensor = torch.frombuffer(buffer, dtype=torch.uint8)
    with open(source_path, "rb") as source, open(out_dir / shard, "wb") as sink:
        sink.write(struct.pack("<Q", len(encoded)))
        sink.write(encoded)
        for name in names:
            info = header[name]
            begin, end = info["data_offsets"]
            source.seek(data_start + begin)
            delta = delta_of(name)
            if delta is None:
                for first in range(begin, end, COPY_CHUNK):
                    sink.write(_read_into(source, whole[: min(COPY_CHUNK, end - first)], name, source_path))
                continue
            if info["dtype"] not in _DTYPES:
                raise InputError(f"cannot add ΔW to tensor {name} of dtype {info['dtype']}", source_path)
            dtype, shape = _DTYPES[info["dtype"]], info["shape"]
            if list(delta.shape) != shape:
                raise InputError(f"ΔW of {name} has shape {list(delta.shape)}, the base tensor {shape}", source_path)
            # Row chunks of the base are read, summed and written in turn: neither the base tensor nor
            # the merged one is ever whole in memory, only ΔW. The sum, rounded to the base's dtype,
            # goes back into the chunk's own bytes.
            rows = delta.reshape(shape[0] if shape else 1, -1)
            row_bytes = (end - begin) // max(rows.shape[0], 1)
            step = max(1, COPY_CHUNK // max(row_bytes, 1))
            if row_bytes > len(buffer):  # a single row beyond the chunk size
                buffer = bytearray(row_bytes)
                whole, as_tensor = memoryview(buffer), torch.frombuffer(buffer, dtype=torch.uint8)
            for first in range(0, rows.shape[0], step):
                part = rows[first : first + step]
                size = part.shape[0] * row_bytes
                if size == 0:
                    continue
                _read_into(source, whole[:size], name, source_path)
                base_part = as_tensor[:size].view(dtype).reshape(part.shape)
                base_part.copy_(part.add_(base_part))
                # A finite ΔW can still overflow the stored dtype (float16 ends at 65504).
                require_finite((base_part,), f"W0 + ΔW of {name} has NaN or Inf values in {info['dtype']}")
                sink.write(whole[:size])
            changed.append(name)
    return changed

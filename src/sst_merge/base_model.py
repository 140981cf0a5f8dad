"""The base model on disk: its config and the shapes of its Linear modules, read without weights."""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError, safe_open

from sst_merge.errors import InputError
from sst_merge.writers import base_shard_files, read_safetensors_header

if TYPE_CHECKING:
    from transformers import PretrainedConfig


def read_base_config(path: str | Path) -> PretrainedConfig:
    """Load the Hugging Face config of the local base model directory `path`."""
    from transformers import AutoConfig  # imported here: a merge that needs no model class skips transformers

    cfg_file = _config_file(path)
    try:
        return AutoConfig.from_pretrained(str(path), local_files_only=True)
    except (ValueError, KeyError, OSError) as exc:
        raise InputError(f"cannot read model config ({exc})", cfg_file) from exc


def _config_file(path: str | Path) -> Path:
    """The config.json of the base model directory `path`, checked to exist and to be JSON."""
    path = Path(path)
    if not path.is_dir():
        raise InputError("base model directory not found", path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise InputError("missing config.json: not a Hugging Face model directory", path)
    try:
        json.loads(cfg_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read model config ({exc})", cfg_file) from exc
    return cfg_file


def linear_shapes(path: str | Path) -> dict[str, tuple[int, int]]:
    """Map each Linear module name of the base model to its weight shape (d_out, d_in).

    The model is instantiated on the meta device: no weight is read or allocated.
    """
    from transformers import AutoModelForCausalLM

    config = read_base_config(path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return {
        name: (int(module.out_features), int(module.in_features))
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
    }


def stored_weight_index(path: str | Path) -> dict[str, tuple[str, tuple[int, int]]] | None:
    """{module: (shard file name, (d_out, d_in))} of every 2-D `<module>.weight` in a model's safetensors
    files, read from their headers; None when the model has no safetensors checkpoint."""
    path = Path(path)
    files = base_shard_files(path)
    if files is None:
        return None
    index = {}
    for name in files:
        _, header = read_safetensors_header(path / name)
        for tensor, info in header.items():
            shape = info.get("shape") if isinstance(info, dict) else None
            if tensor.endswith(".weight") and isinstance(shape, list) and len(shape) == 2:
                index[tensor.removesuffix(".weight")] = (name, (int(shape[0]), int(shape[1])))
    return index


def stored_weight_shapes(path: str | Path) -> dict[str, tuple[int, int]] | None:
    """{module: (d_out, d_in)} of every 2-D `<module>.weight` in the base's safetensors files, read from
    their headers; None when the base has no safetensors checkpoint."""
    index = stored_weight_index(path)
    return None if index is None else {module: shape for module, (_, shape) in index.items()}


def read_weight(path: str | Path, shard: str, module: str) -> torch.Tensor:
    """The weight of `module` (d_out, d_in) from the safetensors file `shard` of the model at `path`, as
    float32: that one tensor is read, not the file."""
    file = Path(path) / shard
    try:
        with safe_open(str(file), framework="pt") as handle:
            return handle.get_tensor(f"{module}.weight").float()
    except (SafetensorError, OSError) as exc:
        raise InputError(f"cannot read {module}.weight ({exc})", file) from exc


def adapted_module_shapes(path: str | Path, modules: Collection[str]) -> dict[str, tuple[int, int]]:
    """(d_out, d_in) of the base's Linear modules, to check adapters that adapt `modules` against.

    Read from the safetensors headers when they hold a 2-D weight for every one of `modules`, so that
    no model class is imported: the import would be most of a merge's start-up (fan_in_fan_out
    adapters, whose base weight is stored transposed, are refused when loaded). Otherwise (a .bin
    checkpoint, a tied weight the files do not store) from the model class on the meta device. Keys
    come in natural name order (layer 2 before layer 10) whichever way they were read, so both give
    jobs the same module order.
    """
    _config_file(path)
    shapes = stored_weight_shapes(path)
    if shapes is None or not set(modules) <= set(shapes):
        shapes = linear_shapes(path)
    return {name: shapes[name] for name in natural_order(shapes)}


def natural_order(names: Iterable[str]) -> list[str]:
    """`names` sorted with digit runs compared as numbers: model.layers.2 before model.layers.10."""
    return sorted(names, key=lambda name: [(0, int(part), "") if part.isdigit() else (1, 0, part)
                                           for part in re.split(r"(\d+)", name)])

"""The base model on disk: its config and the shapes of its Linear modules, read without weights."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

from sst_merge.errors import InputError


def read_base_config(path: str | Path) -> PretrainedConfig:
    """Load the Hugging Face config of the local base model directory `path`."""
    path = Path(path)
    if not path.is_dir():
        raise InputError("base model directory not found", path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise InputError("missing config.json: not a Hugging Face model directory", path)
    try:
        json.loads(cfg_file.read_text(encoding="utf-8"))
        return AutoConfig.from_pretrained(str(path), local_files_only=True)
    except (json.JSONDecodeError, ValueError, KeyError, OSError) as exc:
        raise InputError(f"cannot read model config ({exc})", cfg_file) from exc


def linear_shapes(path: str | Path) -> dict[str, tuple[int, int]]:
    """Map each Linear module name of the base model to its weight shape (d_out, d_in).

    The model is instantiated on the meta device: no weight is read or allocated.
    """
    config = read_base_config(path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return {
        name: (int(module.out_features), int(module.in_features))
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
    }

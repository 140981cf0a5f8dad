"""Load a chat model for evaluation: base model (hub id or local directory), optional PEFT adapter, tokenizer."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from sst_merge.errors import InputError
from sst_merge.generation import prepare_tokenizer

DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICE_MAPS = (None, "auto", "cpu", "cuda")


def _local_dir(name: str | Path, what: str) -> Path | None:
    """`name` as a local directory, None if it reads as a hub id; a local-looking path that is missing is an error.

    A string that exists on disk, is absolute, or starts with `.` or `~` is a path; anything else
    (`org/model`) is left to the Hugging Face hub.
    """
    text = str(name)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise InputError(f"{what} must be a directory", path)
        return path
    if isinstance(name, Path) or path.is_absolute() or text.startswith((".", "~")) or text.count("/") > 1:
        raise InputError(f"{what} directory not found", path)
    return None


def load_tokenizer(base: str | Path, adapter: str | Path | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer of the adapter directory if it ships one, else the base's; left padding, pad token set."""
    source: str | Path = base
    if adapter is not None and (Path(adapter) / "tokenizer_config.json").is_file():
        source = adapter
    local = _local_dir(source, "tokenizer")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(local or source), local_files_only=local is not None)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot load tokenizer ({exc})", local or source) from exc
    if tokenizer.eos_token is None and tokenizer.pad_token is None:
        raise InputError("tokenizer has neither an EOS nor a pad token", local or source)
    return prepare_tokenizer(tokenizer)


def load_model(
    base: str | Path,
    adapter: str | Path | None = None,
    dtype: str = "auto",
    device_map: str | None = None,
    attn_implementation: str | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load `base` (hub id or local directory) with the PEFT adapter `adapter` applied, in eval mode.

    `dtype`: "auto" (the checkpoint's), "float32", "bfloat16" or "float16". `device_map`: None (CPU,
    one device), "cpu", "cuda" or "auto" (shard across the visible GPUs, via accelerate). Local
    directories are read with `local_files_only`, so nothing is fetched for them. Returns
    `(model, tokenizer)`; the tokenizer pads on the left and has a pad token.
    """
    if dtype not in DTYPES:
        raise InputError(f"unknown dtype {dtype!r} (one of {', '.join(DTYPES)})")
    if device_map not in DEVICE_MAPS:
        raise InputError(f"unknown device map {device_map!r} (auto, cpu or cuda)")
    if device_map == "cuda" and not torch.cuda.is_available():
        raise InputError("device map 'cuda' asked for, but no CUDA device is available")
    local = _local_dir(base, "base model")
    if local is not None and not (local / "config.json").is_file():
        raise InputError("missing config.json: not a Hugging Face model directory", local)
    kwargs: dict = {"dtype": DTYPES[dtype], "local_files_only": local is not None}
    if device_map is not None:
        kwargs["device_map"] = device_map
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = AutoModelForCausalLM.from_pretrained(str(local or base), **kwargs)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot load model ({exc})", local or base) from exc
    if adapter is not None:
        adapter_dir = _local_dir(adapter, "adapter")
        if adapter_dir is not None and not (adapter_dir / "adapter_config.json").is_file():
            raise InputError("missing adapter_config.json: not a PEFT adapter directory", adapter_dir)
        try:
            model = PeftModel.from_pretrained(model, str(adapter_dir or adapter), is_trainable=False,
                                              local_files_only=adapter_dir is not None)
        except (OSError, ValueError, KeyError) as exc:
            raise InputError(f"cannot load adapter ({exc})", adapter_dir or adapter) from exc
    model.eval()
    return model, load_tokenizer(base, adapter)

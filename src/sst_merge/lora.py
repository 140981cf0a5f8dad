"""LoRA adapters in PEFT's directory format: load, validate against a base model, compute ΔW.

An adapter is a mapping from base-model module names (``model.layers.0.self_attn.q_proj``) to
``LoraFactors`` (A, B, scale) with ``ΔW = scale · B @ A`` in float32, whatever the stored dtype.
"""

from __future__ import annotations

import math
import pickle
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from sst_merge.errors import InputError, require_finite
from sst_merge.jsonl import read_json_object

CONFIG_NAME = "adapter_config.json"
SAFETENSORS_NAME = "adapter_model.safetensors"
BIN_NAME = "adapter_model.bin"

# Every linear projection of a Llama decoder block: the LoRA targets of "all projections".
ALL_PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# PEFT stores weights under "base_model.model.<module>.lora_{A,B}.weight" (no adapter name).
_KEY_RE = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<which>[AB])(?:\.[^.]+)?\.weight$")


# Entries of ΔW computed per matmul. A block stays in cache; and since a matmul's rounding depends on
# its shape, everything that forms ΔW uses these same row blocks, so that all agree bit for bit.
DELTA_BLOCK_ENTRIES = 1 << 16


def delta_row_blocks(d_out: int, d_in: int) -> list[slice]:
    """The row blocks in which ΔW (d_out, d_in) is computed, in order."""
    step = max(1, DELTA_BLOCK_ENTRIES // max(d_in, 1))
    return [slice(i, min(i + step, d_out)) for i in range(0, d_out, step)]


@dataclass(frozen=True)
class LoraFactors:
    """One module's LoRA update ``ΔW = scale · B @ A``.

    A: (r, d_in) float32, B: (d_out, r) float32, scale: alpha/r (or alpha/√r for rsLoRA).
    """

    A: torch.Tensor
    B: torch.Tensor
    scale: float

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        """(d_out, d_in) of the ΔW this update adds."""
        return int(self.B.shape[0]), int(self.A.shape[1])

    def delta_rows(self, rows: slice, out: torch.Tensor | None = None) -> torch.Tensor:
        """Rows `rows` of ΔW, float32 (one block of `delta_row_blocks`), written into `out` if given."""
        out = torch.mm(self.B[rows], self.A, out=out)
        return out.mul_(self.scale)

    def delta(self) -> torch.Tensor:
        """Dense ΔW (d_out, d_in), float32, computed block by block as the streaming merges compute it."""
        out = torch.empty(self.shape)
        for rows in delta_row_blocks(*self.shape):
            self.delta_rows(rows, out=out[rows])
        return out


@dataclass
class LoraAdapter:
    """A loaded PEFT LoRA adapter: its directory, its config and its per-module factors."""

    path: Path
    config: dict[str, Any]
    modules: dict[str, LoraFactors] = field(default_factory=dict)

    @property
    def base_model_name_or_path(self) -> str | None:
        return self.config.get("base_model_name_or_path")


def lora_scale(alpha: float, rank: int, use_rslora: bool) -> float:
    """PEFT's scaling: alpha/r, or alpha/√r with rsLoRA."""
    return alpha / math.sqrt(rank) if use_rslora else alpha / rank


def _pattern_regex(key: str) -> re.Pattern[str]:
    """PEFT's rank_pattern/alpha_pattern key as a regex: it matches a module name ending in it."""
    return re.compile(rf"(.*\.)?({key})$")


def _pattern_value(pattern: dict[str, Any], module: str, default: Any) -> Any:
    """The value of the first key of `pattern` that matches `module`, else `default`."""
    for key, value in pattern.items():
        if _pattern_regex(key).match(module):
            return value
    return default


def read_adapter_config(path: str | Path) -> dict[str, Any]:
    """Read and check ``adapter_config.json`` of the adapter directory `path`."""
    path = Path(path)
    if not path.is_dir():
        raise InputError("adapter directory not found", path)
    cfg_path = path / CONFIG_NAME
    if not cfg_path.is_file():
        raise InputError(f"missing {CONFIG_NAME}: not a PEFT adapter directory", path)
    config = read_json_object(cfg_path, "JSON")
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise InputError(f"peft_type is {peft_type}; only LORA adapters can be merged", cfg_path)
    if config.get("use_dora"):
        raise InputError("DoRA adapters (use_dora=true) are not supported", cfg_path)
    if config.get("fan_in_fan_out"):
        raise InputError("fan_in_fan_out=true (Conv1D layers) is not supported", cfg_path)
    for key in ("r", "lora_alpha"):
        if key in config and not _finite_number(config[key]):
            raise InputError(f"{key} must be a finite number, got {config[key]!r}", cfg_path)
    pattern = config.get("alpha_pattern") or {}
    if not isinstance(pattern, dict):
        raise InputError(f"alpha_pattern must be a mapping of module patterns to numbers, got {pattern!r}", cfg_path)
    for key, value in pattern.items():
        try:
            _pattern_regex(key)
        except re.error as exc:
            raise InputError(f"alpha_pattern key {key!r} is not a regular expression ({exc})", cfg_path) from exc
        if not _finite_number(value):
            raise InputError(f"alpha_pattern[{key!r}] must be a finite number, got {value!r}", cfg_path)
    return config


def _finite_number(value: Any) -> bool:
    """A JSON number that is neither NaN nor ±Infinity (Python's json reads both); true/false are not numbers."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _pickle_problem(exc: Exception) -> str:
    """torch's refusal of a pickle that holds more than tensors, without its advice to turn the check off."""
    detail = str(exc).partition("WeightsUnpickler error:")[2].partition("Check the documentation")[0]
    return "refused: the pickle holds objects other than tensors" + (f" ({' '.join(detail.split())})"
                                                                     if detail.strip() else "")


def _load_weights(path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    st, bin_ = path / SAFETENSORS_NAME, path / BIN_NAME
    if st.is_file():
        try:
            return st, load_file(str(st), device="cpu")
        except (SafetensorError, RuntimeError, OSError, EOFError, ValueError) as exc:
            raise InputError(f"corrupt adapter weights ({type(exc).__name__}: {exc})", st) from exc
    if bin_.is_file():
        try:
            # Never unpickle arbitrary objects from an adapter file. The unpickler's warnings about
            # protocols would be stray lines on stderr.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                state = torch.load(str(bin_), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise InputError(_pickle_problem(exc), bin_) from exc
        except Exception as exc:  # a corrupt pickle fails in any of many ways (KeyError, struct.error, …)
            raise InputError(f"corrupt adapter weights ({type(exc).__name__}: {exc})", bin_) from exc
        if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(t, torch.Tensor)
                                                  for k, t in state.items()):
            raise InputError("corrupt adapter weights (not a mapping of names to tensors)", bin_)
        return bin_, state
    raise InputError(f"missing {SAFETENSORS_NAME} (or {BIN_NAME})", path)


def load_adapter(path: str | Path) -> LoraAdapter:
    """Load a PEFT LoRA adapter directory into float32 per-module factors.

    Raises InputError (naming the file) for a missing or corrupt config or weights, unpaired
    A/B tensors, inconsistent ranks, unsupported LoRA variants, or NaN/Inf values.
    """
    path = Path(path)
    config = read_adapter_config(path)
    weights_file, state = _load_weights(path)
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        if "lora_embedding_" in key or "lora_magnitude_vector" in key:
            raise InputError(f"unsupported LoRA tensor {key} (only Linear LoRA is supported)", weights_file)
        match = _KEY_RE.match(key)
        if match is None:
            raise InputError(f"unexpected tensor {key} (not a LoRA A/B weight)", weights_file)
        pairs.setdefault(match["module"], {})[match["which"]] = tensor
    if not pairs:
        raise InputError("no LoRA weights in file", weights_file)

    default_alpha = float(config.get("lora_alpha", config.get("r", 8)))
    use_rslora = bool(config.get("use_rslora", False))
    modules: dict[str, LoraFactors] = {}
    for module, ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            raise InputError(f"module {module} has lora_{''.join(ab)} but not its pair", weights_file)
        A, B = ab["A"].to(torch.float32), ab["B"].to(torch.float32)
        if A.ndim != 2 or B.ndim != 2 or A.shape[0] != B.shape[1]:
            raise InputError(
                f"module {module}: lora_A {tuple(A.shape)} and lora_B {tuple(B.shape)} do not pair", weights_file
            )
        require_finite((A, B), f"module {module} has NaN or Inf values", weights_file)
        rank = int(A.shape[0])
        if rank == 0:  # its scale alpha/r would divide by zero
            raise InputError(f"module {module} has rank 0 (empty lora_A and lora_B)", weights_file)
        alpha = float(_pattern_value(config.get("alpha_pattern") or {}, module, default_alpha))
        modules[module] = LoraFactors(A=A.contiguous(), B=B.contiguous(), scale=lora_scale(alpha, rank, use_rslora))
    return LoraAdapter(path=path, config=config, modules=modules)


def validate_against_base(adapter: LoraAdapter, base_shapes: dict[str, tuple[int, int]]) -> None:
    """Check that every adapted module exists in the base as a Linear of the same (d_out, d_in)."""
    for module, factors in adapter.modules.items():
        if module not in base_shapes:
            raise InputError(f"target module {module} does not exist in the base model", adapter.path)
        if factors.shape != base_shapes[module]:
            raise InputError(
                f"module {module}: ΔW shape {factors.shape} does not fit base weight {base_shapes[module]}",
                adapter.path,
            )

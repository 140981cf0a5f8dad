"""The Fisher factor file: every module's K-FAC sums and its subspace bases (U, V) in one safetensors
file (`<module>::A_sum` …), with the format name and a JSON record in its metadata."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from sst_merge.atomic import atomic_file
from sst_merge.errors import InputError
from sst_merge.fisher import KFACFactors
from sst_merge.writers import save_tensors

# A file of another format is refused when read, and never reused from the cache (`fisher_cache.cache_key`).
FORMAT = "sst-merge-fisher/2"


def save_factors(
    path: str | Path,
    factors: dict[str, KFACFactors],
    bases: dict[str, tuple[torch.Tensor, torch.Tensor]],
    meta: dict[str, Any],
) -> None:
    """Write factors and their bases (safetensors, `<module>::A_sum` …) atomically, with `meta` as JSON metadata."""
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    for name, f in factors.items():
        U, V = bases[name]
        tensors.update({f"{name}::{key}": t for key, t in f.tensors().items()})
        tensors.update({f"{name}::U": U.float().contiguous(), f"{name}::V": V.float().contiguous()})
    with atomic_file(path) as tmp:
        save_tensors({k: v.contiguous() for k, v in tensors.items()}, tmp,
                     metadata={"format": FORMAT, "meta": json.dumps(meta)})


def load_factors(path: str | Path) -> tuple[dict[str, KFACFactors], dict[str, tuple[torch.Tensor, torch.Tensor]], dict]:
    """Read a factors file written by `save_factors`: (factors, bases, meta)."""
    path = Path(path)
    if not path.is_file():
        raise InputError("Fisher factors file not found", path)
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"corrupt Fisher factors file ({exc})", path) from exc
    if metadata.get("format") != FORMAT:
        raise InputError(f"not a Fisher factors file (format {metadata.get('format')!r})", path)
    names = sorted({key.rsplit("::", 1)[0] for key in tensors})
    factors, bases = {}, {}
    for name in names:
        own = {key.rsplit("::", 1)[1]: t for key, t in tensors.items() if key.rsplit("::", 1)[0] == name}
        factors[name] = KFACFactors.from_tensors(own)
        bases[name] = (own["U"], own["V"])
    return factors, bases, json.loads(metadata.get("meta", "{}"))

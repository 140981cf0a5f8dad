"""The Fisher factor cache: a factors file per content hash of everything that decides it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from sst_merge.fisher import KFACFactors
from sst_merge.fisher_file import FORMAT, load_factors, save_factors


def cache_key(parts: dict[str, Any]) -> str:
    """Content hash of everything that decides a factors file (inputs' fingerprints and settings, and
    the file format: a file of an older format is never read as one of this)."""
    blob = json.dumps({**parts, "format": FORMAT}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def cached_factors(
    cache_dir: Path | None,
    key: str,
    compute: Callable[[], dict[str, KFACFactors]],
    bases: dict[str, tuple[torch.Tensor, torch.Tensor]],
    meta: dict[str, Any],
    read: bool = True,
) -> dict[str, KFACFactors]:
    """The factors stored under `key` in `cache_dir` (if `read`), else `compute()`d and stored there."""
    if cache_dir is None:
        return compute()
    path = Path(cache_dir) / f"fisher-{key}.safetensors"
    if read and path.is_file():
        factors, _, _ = load_factors(path)
        if set(factors) == set(bases):
            return factors
    factors = compute()
    save_factors(path, factors, bases, {**meta, "key": key})
    return factors

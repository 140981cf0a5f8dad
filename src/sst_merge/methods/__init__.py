"""Merge methods, one file each; importing this package registers them all."""

from sst_merge.methods import (  # noqa: F401  (registration)
    agl,
    dare_linear,
    dare_ties,
    magnitude_prune,
    safe_lora,
    sst,
    ta,
    ties,
)
from sst_merge.methods.base import MergeMethod
from sst_merge.methods.registry import get_method, method_names

__all__ = ["MergeMethod", "get_method", "method_names"]

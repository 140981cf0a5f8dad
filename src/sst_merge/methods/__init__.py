"""Merge methods, one file each; importing this package registers them all."""

from sst_merge.methods import agl, dare_linear, dare_ties, magnitude_prune, sst, ta, ties  # noqa: F401  (registration)  # noqa: F401  (registration)
from sst_merge.methods.base import MergeMethod
from sst_merge.methods.registry import get_method, method_names

__all__ = ["MergeMethod", "get_method", "method_names"]

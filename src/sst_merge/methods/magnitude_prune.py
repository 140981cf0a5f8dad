"""Magnitude pruning: trim each task's ΔW to its top-density magnitudes, then weighted sum."""

from __future__ import annotations

import torch

from sst_merge.merge_ops import prune_magnitude, weighted_sum
from sst_merge.methods.base import Dense, MergeMethod, ModuleInputs, SparsifyParams
from sst_merge.methods.registry import register


def magnitude_prune_module(inputs: ModuleInputs, params: SparsifyParams) -> Dense:
    """peft.utils.merge_utils.magnitude_prune on the dense ΔW of each expert."""
    trimmed = torch.stack([prune_magnitude(d, params.density) for d in inputs.deltas()])
    return Dense(weighted_sum(trimmed, torch.tensor(inputs.weights)))


MAGNITUDE_PRUNE = register(
    MergeMethod(
        name="magnitude_prune",
        summary="magnitude pruning of each ΔW, then weighted sum",
        reference="https://huggingface.co/docs/peft/developer_guides/model_merging",
        params=SparsifyParams,
        merge_module=magnitude_prune_module,
    )
)

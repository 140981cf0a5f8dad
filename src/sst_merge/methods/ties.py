"""TIES: trim each task's ΔW to its top-density magnitudes, elect signs, disjoint mean."""

from __future__ import annotations

import torch

from sst_merge.merge_ops import prune_magnitude, ties_combine
from sst_merge.methods.base import Dense, MergeMethod, ModuleInputs, SparsifyParams
from sst_merge.methods.registry import register


def ties_module(inputs: ModuleInputs, params: SparsifyParams) -> Dense:
    """peft.utils.merge_utils.ties on the dense ΔW of each expert (sign election "total")."""
    trimmed = torch.stack([prune_magnitude(d, params.density) for d in inputs.deltas()])
    return Dense(ties_combine(trimmed, torch.tensor(inputs.weights)))


TIES = register(
    MergeMethod(
        name="ties",
        summary="TIES-merging: trim, elect sign, disjoint mean of the dense ΔW",
        reference="https://arxiv.org/abs/2306.01708",
        params=SparsifyParams,
        merge_module=ties_module,
    )
)

"""DARE-TIES: drop-and-rescale each task's ΔW, then TIES sign election and disjoint mean."""

from __future__ import annotations

import torch

from sst_merge.merge_ops import prune_random, ties_combine
from sst_merge.methods.base import Dense, MergeMethod, ModuleInputs, SeededSparsifyParams
from sst_merge.methods.registry import register


def dare_ties_module(inputs: ModuleInputs, params: SeededSparsifyParams) -> Dense:
    """peft.utils.merge_utils.dare_ties on the dense ΔW, with the module's seeded generator."""
    dropped = torch.stack([prune_random(d, params.density, inputs.generator) for d in inputs.deltas()])
    return Dense(ties_combine(dropped, torch.tensor(inputs.weights)))


DARE_TIES = register(
    MergeMethod(
        name="dare_ties",
        summary="DARE drop-and-rescale, then TIES sign election and disjoint mean",
        reference="https://arxiv.org/abs/2311.03099",
        params=SeededSparsifyParams,
        merge_module=dare_ties_module,
    )
)

"""DARE linear: drop each ΔW entry with probability 1−density, rescale by 1/density, weighted sum."""

from __future__ import annotations

import torch

from sst_merge.merge_ops import prune_random, weighted_sum
from sst_merge.methods.base import Dense, MergeMethod, ModuleInputs, SeededSparsifyParams
from sst_merge.methods.registry import register


def dare_linear_module(inputs: ModuleInputs, params: SeededSparsifyParams) -> Dense:
    """peft.utils.merge_utils.dare_linear on the dense ΔW, with the module's seeded generator."""
    dropped = torch.stack([prune_random(d, params.density, inputs.generator) for d in inputs.deltas()])
    return Dense(weighted_sum(dropped, torch.tensor(inputs.weights)))


DARE_LINEAR = register(
    MergeMethod(
        name="dare_linear",
        summary="DARE drop-and-rescale of each ΔW, then weighted sum",
        reference="https://arxiv.org/abs/2311.03099",
        params=SeededSparsifyParams,
        merge_module=dare_linear_module,
    )
)

"""DARE-TIES: drop-and-rescale each task's ΔW, then TIES sign election and disjoint mean."""

from __future__ import annotations

from sst_merge.merge_ops import combine_blocks, dropped_blocks, ties_combine
from sst_merge.methods.base import Dense, MergeMethod, ModuleInputs, SeededSparsifyParams
from sst_merge.methods.registry import register


def dare_ties_module(inputs: ModuleInputs, params: SeededSparsifyParams) -> Dense:
    """peft.utils.merge_utils.dare_ties on the dense ΔW, with the module's seeded generator."""
    weights = inputs.weight_tensor
    blocks = dropped_blocks(inputs, params.density, inputs.generator)
    return Dense(combine_blocks(blocks, lambda block: ties_combine(block, weights), inputs.shape))


DARE_TIES = register(
    MergeMethod(
        name="dare_ties",
        summary="DARE drop-and-rescale, then TIES sign election and disjoint mean",
        reference="https://arxiv.org/abs/2311.03099",
        params=SeededSparsifyParams,
        merge_module=dare_ties_module,
    )
)

"""DARE linear: drop each ΔW entry with probability 1−density, rescale by 1/density, weighted sum."""

from __future__ import annotations

from sst_merge.merge_ops import combine_blocks, dropped_blocks, weighted_sum
from sst_merge.methods.base import Dense, MergeMethod, ModuleInputs, SeededSparsifyParams
from sst_merge.methods.registry import register


def dare_linear_module(inputs: ModuleInputs, params: SeededSparsifyParams) -> Dense:
    """peft.utils.merge_utils.dare_linear on the dense ΔW, with the module's seeded generator."""
    weights = inputs.weight_tensor
    blocks = dropped_blocks(inputs, params.density, inputs.generator)
    return Dense(combine_blocks(blocks, lambda block: weighted_sum(block, weights), inputs.shape))


DARE_LINEAR = register(
    MergeMethod(
        name="dare_linear",
        summary="DARE drop-and-rescale of each ΔW, then weighted sum",
        reference="https://arxiv.org/abs/2311.03099",
        params=SeededSparsifyParams,
        merge_module=dare_linear_module,
    )
)

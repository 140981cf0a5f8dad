"""Magnitude pruning: trim each task's ΔW to its top-density magnitudes, then weighted sum."""

from __future__ import annotations

from sst_merge.merge_ops import combine_blocks, trimmed_blocks, weighted_sum
from sst_merge.methods.base import Dense, MergeMethod, ModuleInputs, SparsifyParams
from sst_merge.methods.registry import register


def magnitude_prune_module(inputs: ModuleInputs, params: SparsifyParams) -> Dense:
    """peft.utils.merge_utils.magnitude_prune on the dense ΔW of each expert."""
    weights = inputs.weight_tensor
    blocks = trimmed_blocks(inputs, params.density)
    return Dense(combine_blocks(blocks, lambda block: weighted_sum(block, weights), inputs.shape))


MAGNITUDE_PRUNE = register(
    MergeMethod(
        name="magnitude_prune",
        summary="magnitude pruning of each ΔW, then weighted sum",
        reference="https://huggingface.co/docs/peft/developer_guides/model_merging",
        params=SparsifyParams,
        merge_module=magnitude_prune_module,
    )
)

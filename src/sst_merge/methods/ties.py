"""TIES: trim each task's ΔW to its top-density magnitudes, elect signs, disjoint mean."""

from __future__ import annotations

from sst_merge.merge_ops import combine_blocks, ties_combine, trimmed_blocks
from sst_merge.methods.base import Dense, MergeMethod, ModuleInputs, SparsifyParams
from sst_merge.methods.registry import register


def ties_module(inputs: ModuleInputs, params: SparsifyParams) -> Dense:
    """peft.utils.merge_utils.ties on the dense ΔW of each expert (sign election "total")."""
    weights = inputs.weight_tensor
    blocks = trimmed_blocks(inputs, params.density)
    return Dense(combine_blocks(blocks, lambda block: ties_combine(block, weights), inputs.shape))


TIES = register(
    MergeMethod(
        name="ties",
        summary="TIES-merging: trim, elect sign, disjoint mean of the dense ΔW",
        reference="https://arxiv.org/abs/2306.01708",
        params=SparsifyParams,
        merge_module=ties_module,
    )
)

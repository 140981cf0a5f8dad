"""Task arithmetic: Σ_k w_k ΔW_k, exact in factored form by concatenating the LoRA factors."""

from __future__ import annotations

import torch

from sst_merge.methods.base import Factored, MergeMethod, MethodParams, ModuleInputs
from sst_merge.methods.registry import register


def task_arithmetic_factored(inputs: ModuleInputs, params: MethodParams) -> Factored:
    """[w_1 s_1 B_1 … w_K s_K B_K] @ [A_1; …; A_K]: the weighted sum without forming any dense ΔW."""
    present = [(w, f) for w, f in zip(inputs.weights, inputs.experts, strict=True) if f is not None]
    B = torch.cat([w * f.scale * f.B for w, f in present], dim=1)
    A = torch.cat([f.A for _, f in present], dim=0)
    return Factored(B=B, A=A)


TA = register(
    MergeMethod(
        name="ta",
        summary="task arithmetic: weighted sum of the experts' ΔW (exact, low-rank)",
        reference="https://arxiv.org/abs/2212.04089",
        params=MethodParams,
        merge_module=task_arithmetic_factored,
    )
)

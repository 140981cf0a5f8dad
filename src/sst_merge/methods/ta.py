"""Task arithmetic: Σ_k w_k ΔW_k, exact in factored form by concatenating the LoRA factors."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sst_merge.lora import LoraFactors
from sst_merge.methods.base import Factored, MergeMethod, MethodParams, ModuleInputs
from sst_merge.methods.registry import register


def weighted_factors(experts: Sequence[LoraFactors | None], weights: Sequence[float]) -> Factored:
    """[w_1 s_1 B_1 … w_K s_K B_K] (d_out, Σr) @ [A_1; …; A_K] (Σr, d_in): Σ w_k ΔW_k without forming any
    dense ΔW (experts that lack the module, None, are left out; at least one must be present)."""
    present = [(w, f) for w, f in zip(weights, experts, strict=True) if f is not None]
    B = torch.cat([w * f.scale * f.B for w, f in present], dim=1)
    A = torch.cat([f.A for _, f in present], dim=0)
    return Factored(B=B, A=A)


def task_arithmetic_factored(inputs: ModuleInputs, params: MethodParams) -> Factored:
    """Task arithmetic of one module, exact and low-rank (see `weighted_factors`)."""
    return weighted_factors(inputs.experts, inputs.weights)


TA = register(
    MergeMethod(
        name="ta",
        summary="task arithmetic: weighted sum of the experts' ΔW (exact, low-rank)",
        reference="https://arxiv.org/abs/2212.04089",
        params=MethodParams,
        merge_module=task_arithmetic_factored,
    )
)

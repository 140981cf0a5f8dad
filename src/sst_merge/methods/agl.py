"""AGL (AlignGuard-LoRA, arXiv 2508.02079) adapted to merge time (DESIGN §6).

The same subspace and Fisher pass as SST, but the eigenbasis is that of the safety Fisher alone
(F_s = Ā_s ⊗ Ḡ_s, a standard eigenproblem, no utility term). The task-arithmetic core is split into
its alignment-critical part (the top-k eigendirections, or the fewest top directions holding `energy`
of the spectrum) and the rest; the critical part is scaled by `keep` (0 removes it). AGL vs SST isolates
what the utility Fisher in the denominator buys.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pydantic import Field

from sst_merge.gevp import KroneckerEigen, kronecker_gevp
from sst_merge.methods.base import Factored, MergeJob, MergeMethod, ModuleInputs
from sst_merge.methods.fisher_setup import FisherParams, factor_sets, job_subspaces
from sst_merge.methods.registry import register
from sst_merge.methods.sst import utility_core
from sst_merge.subspace import ModuleSubspace


class AGLParams(FisherParams):
    """AGL parameters: which safety-critical directions to treat, and the Fisher pass."""

    top_k: int | None = Field(None, ge=1, description="treat the top-k safety eigendirections as critical")
    energy: float = Field(0.9, gt=0.0, le=1.0, description="else: fewest top directions holding this share of Σλ")
    keep: float = Field(0.0, ge=0.0, le=1.0, description="factor on the critical coefficients (0 removes them)")


@dataclass(frozen=True)
class AGLContext:
    """One module's subspace and safety eigenbasis (None when the module's updates are all zero)."""

    subspace: ModuleSubspace
    eig: KroneckerEigen | None


def critical_mask(lam: torch.Tensor, top_k: int | None, energy: float) -> torch.Tensor:
    """1.0 on the critical directions of λ (p, q): the top-k, or the fewest top ones with `energy` of Σλ."""
    flat = lam.reshape(-1)
    order = torch.argsort(flat, descending=True)
    if top_k is not None:
        count = min(top_k, flat.numel())
    else:
        total = float(flat.sum())
        if total <= 0:
            count = 0
        else:
            cumulative = torch.cumsum(flat[order], 0)
            count = int((cumulative < energy * total * (1 - 1e-12)).sum()) + 1
    mask = torch.zeros(flat.numel(), dtype=torch.float64)
    mask[order[:count]] = 1.0
    return mask.reshape(lam.shape)


def prepare_agl(job: MergeJob, params: AGLParams) -> dict[str, AGLContext]:
    """Subspaces, the safety Fisher (one pass) and its Kronecker eigenbasis per module."""
    subspaces = job_subspaces(job)
    (safety,) = factor_sets(job, subspaces, [params.safety_data], params)
    return {
        name: AGLContext(sub, kronecker_gevp(safety[name].A, safety[name].G, None, None, 0.0, name)
                         if sub.p and sub.q else None)
        for name, sub in subspaces.items()
    }


def merge_agl(inputs: ModuleInputs, params: AGLParams) -> Factored:
    """Scale the critical part of the task-arithmetic core by `keep`; returns U core · Vᵀ factored."""
    ctx: AGLContext = inputs.context
    d_out, d_in = inputs.shape
    if ctx.eig is None:
        return Factored(B=torch.zeros(d_out, 1), A=torch.zeros(1, d_in))
    critical = critical_mask(ctx.eig.lam, params.top_k, params.energy)
    c = ctx.eig.coefficients(utility_core(ctx.subspace, inputs.weights))
    core = ctx.eig.reconstruct(c * (1.0 - critical * (1.0 - params.keep)))
    return Factored.in_bases(ctx.subspace.U, core, ctx.subspace.V)


AGL = register(
    MergeMethod(
        name="agl",
        summary="AlignGuard-style: remove the top safety-Fisher eigendirections from the task-arithmetic merge",
        reference="https://arxiv.org/abs/2508.02079",
        params=AGLParams,
        merge_module=merge_agl,
        prepare=prepare_agl,
    )
)

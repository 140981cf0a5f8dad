"""AGL (AlignGuard-LoRA, arXiv 2508.02079) adapted to merge time (DESIGN §6).

The same subspace and Fisher pass as SST, but the eigenbasis is that of the safety Fisher alone
(F_s = Ā_s ⊗ Ḡ_s, a standard eigenproblem, no utility term). The task-arithmetic core is split into
its alignment-critical part (the top-k eigendirections, or the fewest top directions holding `energy`
of the spectrum) and the rest; the critical part is scaled by `keep` (0 removes it). AGL vs SST isolates
what the utility Fisher in the denominator buys. The safety Fisher is taken where SST takes it
(`fisher_at`, default base + task arithmetic; `fisher_rounds` re-takes it at AGL's own filtered merge),
so that the comparison varies the filter only. What a merge removed (critical directions, share of the
update's safety-Fisher energy) is recorded by `resolve_agl`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from pydantic import Field

from sst_merge.fisher import KFACFactors
from sst_merge.gevp import KroneckerEigen, kronecker_gevp, safety_energy
from sst_merge.methods.base import Factored, MergeJob, MergeMethod, ModuleInputs, Prepared
from sst_merge.methods.fisher_setup import (
    FactorSource,
    FisherParams,
    FisherPoint,
    core_point,
    iterate_safety,
    job_subspaces,
    start_point,
)
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
    """One module's subspace, safety eigenbasis and the coefficients c (p, q) of its task-arithmetic core
    in that basis (eig and c are None when the module's updates are all zero)."""

    subspace: ModuleSubspace
    eig: KroneckerEigen | None
    c: torch.Tensor | None = None


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


def kept_coefficients(ctx: AGLContext, params: AGLParams) -> tuple[torch.Tensor, torch.Tensor]:
    """(c with its critical part scaled by `keep`, the critical mask), both (p, q), of a module with updates."""
    assert ctx.eig is not None and ctx.c is not None
    critical = critical_mask(ctx.eig.lam, params.top_k, params.energy)
    return ctx.c * (1.0 - critical * (1.0 - params.keep)), critical


def prepare_agl(job: MergeJob, params: AGLParams) -> Prepared:
    """Subspaces, the safety Fisher (one pass, at `fisher_at`) and its Kronecker eigenbasis per module;
    then `fisher_rounds` − 1 times the safety Fisher again at AGL's filtered merge."""
    subspaces = job_subspaces(job)
    source = FactorSource(job, subspaces, params)
    point = start_point(job, params.fisher_at)
    (safety,) = source.factors([params.safety_data], point)

    def build(factors: dict[str, KFACFactors], _previous: dict[str, AGLContext] | None
              ) -> tuple[dict[str, AGLContext], dict[str, Any]]:
        contexts = {}
        for name, sub in subspaces.items():
            if not (sub.p and sub.q):
                contexts[name] = AGLContext(sub, None)
                continue
            eig = kronecker_gevp(factors[name].A, factors[name].G, None, None, 0.0, name)
            contexts[name] = AGLContext(sub, eig, eig.coefficients(utility_core(sub, job.weights)))
        return contexts, {}

    def merged_point(contexts: dict[str, AGLContext], label: str) -> FisherPoint:
        cores = {name: ctx.eig.reconstruct(kept_coefficients(ctx, params)[0])
                 for name, ctx in contexts.items() if ctx.eig is not None}
        return core_point(label, subspaces, cores)

    contexts, rounds = iterate_safety(source, params.safety_data, params.fisher_rounds, (point, safety), build,
                                      merged_point)
    return Prepared(contexts, {"fisher_at": point.label, "rounds": rounds})


def resolve_agl(prepared: Prepared, params: AGLParams) -> dict[str, Any]:
    """What a merge treated as critical: the rule (top_k or energy) and keep, how many directions that
    made (all modules), and the share of the task-arithmetic update's safety-Fisher energy removed."""
    directions = 0
    before = after = 0.0
    for ctx in prepared.modules.values():
        if ctx.eig is None:
            continue
        kept, critical = kept_coefficients(ctx, params)
        directions += int(critical.sum())
        before += safety_energy(ctx.eig.lam, ctx.c)
        after += safety_energy(ctx.eig.lam, kept)
    rule = {"top_k": params.top_k} if params.top_k is not None else {"energy": params.energy}
    return {**rule, "keep": params.keep, "critical_directions": directions,
            "safety_energy_removed": 1.0 - after / before if before > 0 else None, **prepared.facts}


def merge_agl(inputs: ModuleInputs, params: AGLParams) -> Factored:
    """Scale the critical part of the task-arithmetic core by `keep`; returns U core · Vᵀ factored."""
    ctx: AGLContext = inputs.context
    d_out, d_in = inputs.shape
    if ctx.eig is None:
        return Factored(B=torch.zeros(d_out, 1), A=torch.zeros(1, d_in))
    core = ctx.eig.reconstruct(kept_coefficients(ctx, params)[0])
    return Factored.in_bases(ctx.subspace.U, core, ctx.subspace.V)


AGL = register(
    MergeMethod(
        name="agl",
        summary="AlignGuard-style: remove the top safety-Fisher eigendirections from the task-arithmetic merge",
        reference="https://arxiv.org/abs/2508.02079",
        params=AGLParams,
        merge_module=merge_agl,
        prepare=prepare_agl,
        resolve=resolve_agl,
    )
)

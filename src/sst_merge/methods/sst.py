"""SST-Merge: task arithmetic filtered in the safety-vs-utility generalized eigenbasis (DESIGN §5).

Per module, on the cores of the shared subspace: δ_u = Σ w_k C_k; c = coefficients of δ_u in the
eigenbasis of F_s v = λ F_u v; c'_ij = c_ij/(1+βλ_ij) (or zero on the top-ρ fraction of λ); the safety
adapter's core, if given, is added with βλ/(1+βλ) (or on that top fraction); ΔW* = U (δ'_u + δ'_s) Vᵀ.
Without β the soft filter's β is calibrated so that it removes `safety_share` of the safety-Fisher
energy Σ λ c² of the merged update (all modules together); the β used is recorded (`resolve_sst`).

The filter c/(1+βλ) is the minimiser of ½‖δ'−δ_u‖²_{F_u} + ½β‖δ'‖²_{F_s}: a model of the safety loss
as a quadratic that is minimal at the base, with F_s as its curvature. Three choices decide how well
that model describes the merge (see `fisher_setup` for the first two):

* where F_s is taken (`fisher_at`, default "ta", base + task arithmetic): at the base, on refusal data,
  the refusal loss is ~0 and so is F_s; at the merged point the refusal loss is large and F_s sees the
  directions that break it (DESIGN §3: on the synthetic testbed the factor ratio went from 3.5e-9 at
  the base to 1.97 at base + TA, and SST's refusal from 0.00 to 0.90–1.00 for β ≥ 1e3).
* iterating (`fisher_rounds`): the filtered merge is a new point; F_s re-taken there sees what is
  still harmful after the filter (and stops seeing what the filter already removed), so a few rounds
  move the filter to where the merge ends up rather than where it started.
* the first-order term (`first_order`): around a point a (the utility core the Fisher was taken at:
  δ_u at "ta", 0 at "base", the last round's filtered core after it) the safety loss also has a
  measured gradient g_s, and the minimiser of ½‖δ'−δ_u‖²_{F_u} + β[g_sᵀ(δ'−a) + ½‖δ'−a‖²_{F_s}] is
  c' = c_a + (c_u − c_a − βĝ_s)/(1+βλ) in the same eigenbasis (`gevp.first_order_filter`); at a = δ_u
  that is δ_u − β(F_u+βF_s)⁻¹g_s. If the safety loss really were ½‖δ‖²_{F_s}, g_s = F_s a and this is
  exactly the filter, so the option changes the merge only where the measured gradient disagrees with
  the quadratic model — which is where the model is wrong. It needs the empirical Fisher (the true
  Fisher's pass backpropagates sampled labels, whose gradient is zero in expectation) and the soft
  filter. The calibrated β is the filter's (the same energy rule), then weighs the gradient step.
  K-FAC's Ā ⊗ Ḡ can be far flatter along g_s than the exact Fisher (which is ⪰ g_s g_sᵀ), so by default
  the model's curvature is F_s + g_s g_sᵀ (`first_order_curvature`), solved over all modules at once;
  its predicted decrease is then at most ½ nat per position. Measured on the micro testbed (few-step
  models, 3 experts): with K-FAC alone the step was 220–6100× the TA update and predicted a drop of
  5.5–21 nats per position from a loss of ~1; with F_s + ggᵀ the prediction stays near −0.48 (never
  below −½), but the step is still 4–800× the update, and the safety NLL measured at the first-order
  merge rose (4.47 nats/token at TA → 5.96–6.16 with either curvature, β calibrated, 1 or 100), where the
  plain filter's merge gave 4.08–5.32. Hence off by default.

Which of these keeps refusal best on the real organism was measured on its validation split (issue 14):
the defaults are "ta", 2 rounds where β is calibrated by the share (one where β is given), no
first-order term (DEFAULT_SAFETY_SHARE's comment).
The derivations, the pooling of the tasks' utility Fishers and its measurements: docs/fisher-and-baselines.md.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from sst_merge.errors import InputError
from sst_merge.fisher import KFACFactors
from sst_merge.gevp import (
    Eigenbasis,
    beta_for_safety_energy,
    calibrate_beta,
    diagonal_gevp,
    energy_spectrum,
    first_order_filter,
    first_order_rank_one,
    hard_keep_mask,
    injection_filter,
    kronecker_gevp,
    safety_energy,
    soft_filter,
    utility_energy_lost,
)
from sst_merge.methods.base import Factored, MergeJob, MergeMethod, ModuleInputs, Prepared
from sst_merge.methods.fisher_setup import (
    FactorSource,
    FisherParams,
    FisherPoint,
    UtilityPooling,
    core_point,
    factors_nll,
    iterate_safety,
    job_subspaces,
    load_extra_adapter,
    pooled,
    start_point,
)
from sst_merge.methods.registry import register
from sst_merge.subspace import ModuleSubspace

# The default rule: β calibrated to remove this share of the task-arithmetic update's safety-Fisher
# energy, in DEFAULT_FISHER_ROUNDS rounds (the safety Fisher re-taken at the filtered merge and β
# calibrated again there). Chosen on the real organism's validation split (smollm2-135m, K = 8, TA scale
# 0.5; validation refusal on its own held-out harmful prompts plus HarmBench's val behaviours, base
# 0.800, so the selection floor is 0.72), the best validation normalised accuracy above the floor among
# every SST variant measured (docs/fisher-and-baselines.md §7): 2 rounds at share 0.996 (β 3.9 → 136)
# kept 0.767 at 0.251, where one round needed share 0.999 (β = 11.4) to keep 0.783 and fell to 0.075;
# 2 rounds at 0.995 kept 0.717 (one item under the floor), at 0.997 / 0.998 0.767 / 0.750 at 0.199 /
# 0.106. Round 2's Fisher, taken where the first filter restored the refusal loss, separates the tasks'
# energy from the safety energy better than round 1's. A β given by hand (or a sweep, a budget, hard_top,
# the first-order term) runs one round unless fisher_rounds says otherwise: a fixed β does not carry
# across rounds (round 2's Fisher is ~40x smaller). The β each round used is recorded in the merge's
# report and provenance.
DEFAULT_SAFETY_SHARE = 0.996
DEFAULT_FISHER_ROUNDS = 2


class SSTParams(FisherParams):
    """SST-Merge parameters: data, safety adapter, filter strength and the Fisher pass."""

    utility_data: list[Path] = Field(min_length=1, description="chat JSONL of the tasks: one per adapter, or one")
    safety_adapter: Path | None = Field(None, description="PEFT safety adapter injected where safety is cheap")
    beta: float | None = Field(None, ge=0.0, description="filter strength β (default: calibrated by safety_share)")
    beta_sweep: list[float] | None = Field(None, description="write one output per β under the output dir")
    safety_share: float = Field(
        DEFAULT_SAFETY_SHARE, ge=0.0, lt=1.0, description="share of safety-Fisher energy the default β removes"
    )
    safety_budget: float | None = Field(
        None, gt=0.0, description="calibrate β instead so that the merge's safety term ½ vec(δ')ᵀF_s vec(δ') "
                                  "is this many nats per position (an absolute budget, not a share)")
    hard_top: float | None = Field(None, gt=0.0, le=1.0, description="zero the top-ρ fraction of λ instead")
    damping: float = Field(0.01, gt=0.0, description="γ: damping of the utility factors relative to their trace")
    fisher: Literal["kfac", "diagonal"] = Field("kfac", description="K-FAC factors, or the diagonal (ablation)")
    first_order: bool = Field(False, description="add the safety loss's measured gradient to the filter "
                                                 "(δ' = δ_u − β(F_u+βF_s)⁻¹g_s at the TA point)")
    first_order_curvature: Literal["kfac+gg", "kfac"] = Field(
        "kfac+gg", description="safety curvature of the first-order model: K-FAC plus the gradient's outer "
                               "product (bounds the step), or K-FAC alone")
    utility_pooling: UtilityPooling = Field(
        "kronecker", description="pool the tasks' utility Fishers as the nearest Kronecker product of their "
                                 "weighted mean, or as the product of the weighted means")
    fisher_rounds: int = Field(
        DEFAULT_FISHER_ROUNDS, ge=1, le=10, description="re-take the safety Fisher at the filtered merge and filter "
        f"again, this many rounds in all (default: {DEFAULT_FISHER_ROUNDS} where β is calibrated by safety_share, "
        "1 with beta, beta_sweep, hard_top, safety_budget or first_order)")

    @model_validator(mode="before")
    @classmethod
    def _default_rounds(cls, data: Any) -> Any:
        """Rounds left open: the default rule's where β is calibrated by the share, else one (a β given by
        hand, a sweep, a budget, hard_top or the first-order term were measured in one round)."""
        if isinstance(data, dict) and data.get("fisher_rounds") is None:
            other_rule = any(data.get(key) not in (None, False, [])
                             for key in ("beta", "beta_sweep", "hard_top", "safety_budget", "first_order"))
            data = {**data, "fisher_rounds": 1 if other_rule else DEFAULT_FISHER_ROUNDS}
        return data

    @model_validator(mode="after")
    def _compatible(self) -> SSTParams:
        if self.safety_budget is not None and (self.beta is not None or self.hard_top is not None
                                               or self.beta_sweep):
            raise ValueError("safety_budget calibrates β: give it without beta, beta_sweep or hard_top")
        if self.first_order and self.hard_top is not None:
            raise ValueError("first_order needs the soft filter (beta), not hard_top")
        if self.first_order and self.fisher_kind == "true":
            raise ValueError("first_order needs fisher_kind empirical (the true Fisher's sampled labels have a "
                             "zero-mean gradient)")
        if self.fisher_rounds > 1 and self.beta_sweep:
            raise ValueError("fisher_rounds > 1 re-takes the Fisher at the merge of one β: give beta, not beta_sweep")
        if self.first_order and self.beta_sweep:
            raise ValueError("first_order solves one system over all modules per β: give beta, not beta_sweep")
        return self


@dataclass(frozen=True)
class SSTContext:
    """One module's prepared state (cores (p, q), float64): subspace (its first `experts` cores are the
    experts', a last one the safety adapter's), the eigenbasis (None when every update of the module is
    zero), the coefficients c_u of the task-arithmetic core δ_u, the calibrated β, and for the
    first-order term the safety gradient g_s, the utility core a at the point they were taken at, and
    the filtered coefficients c' (solved in `prepare_sst`: with F_s + ggᵀ they couple all modules)."""

    subspace: ModuleSubspace
    eig: Eigenbasis | None
    experts: int = 0
    c_u: torch.Tensor | None = None
    beta: float = 0.0
    grad: torch.Tensor | None = None
    anchor: torch.Tensor | None = None
    c_step: torch.Tensor | None = None

    @property
    def lam(self) -> torch.Tensor | None:
        """λ (p, q), or None for a module without updates."""
        return self.eig.lam if self.eig is not None else None

    def coefficients(self, core: torch.Tensor) -> torch.Tensor:
        """Eigen-coefficients (p, q) of a core."""
        assert self.eig is not None
        return self.eig.coefficients(core)

    def reconstruct(self, c: torch.Tensor) -> torch.Tensor:
        """The core (p, q) of eigen-coefficients."""
        assert self.eig is not None
        return self.eig.reconstruct(c)


def utility_core(subspace: ModuleSubspace, weights: list[float]) -> torch.Tensor:
    """δ_u = Σ_k w_k C_k (p, q) over the first len(weights) cores (the experts), float64."""
    core = torch.zeros(subspace.p, subspace.q, dtype=torch.float64)
    for w, c in zip(weights, subspace.cores, strict=False):
        if c is not None:
            core += w * c.double()
    return core


def used_beta(ctx: SSTContext, params: SSTParams) -> float:
    """The β of a merge: the given one, else the calibrated one."""
    return params.beta if params.beta is not None else ctx.beta


def filter_coefficients(ctx: SSTContext, params: SSTParams) -> tuple[torch.Tensor, torch.Tensor]:
    """(eigen-coefficients of the filtered utility core, factor on the safety core's coefficients), each
    (p, q) float64, of one module with updates."""
    assert ctx.eig is not None and ctx.c_u is not None
    lam = ctx.eig.lam
    if params.hard_top is not None:
        keep = hard_keep_mask(lam, params.hard_top)
        return ctx.c_u * keep, 1.0 - keep
    beta = used_beta(ctx, params)
    if params.first_order:
        assert ctx.c_step is not None
        return ctx.c_step, injection_filter(lam, beta)
    return ctx.c_u * soft_filter(lam, beta), injection_filter(lam, beta)


def filtered_utility_core(ctx: SSTContext, params: SSTParams) -> torch.Tensor:
    """δ'_u (p, q): the module's filtered utility core, without the injected safety part."""
    return ctx.reconstruct(filter_coefficients(ctx, params)[0])


def merged_core(ctx: SSTContext, params: SSTParams) -> torch.Tensor:
    """δ'_u + δ'_s (p, q): the core of the module's merged update."""
    c, inject = filter_coefficients(ctx, params)
    safety = ctx.subspace.cores[ctx.experts] if len(ctx.subspace.cores) > ctx.experts else None
    return ctx.reconstruct(c if safety is None else c + ctx.coefficients(safety) * inject)


def with_first_order_step(contexts: dict[str, SSTContext], params: SSTParams) -> dict[str, SSTContext]:
    """The contexts with c' of the first-order model solved (`gevp.first_order_rank_one` over all modules,
    or `gevp.first_order_filter` per module for the K-FAC curvature alone)."""
    live = [name for name, ctx in contexts.items() if ctx.eig is not None]
    blocks = []
    for name in live:
        ctx = contexts[name]
        assert ctx.eig is not None and ctx.grad is not None and ctx.anchor is not None and ctx.c_u is not None
        blocks.append((ctx.c_u, ctx.coefficients(ctx.anchor), ctx.eig.natural_coefficients(ctx.grad), ctx.eig.lam))
    beta = used_beta(contexts[live[0]], params) if live else 0.0
    if params.first_order_curvature == "kfac+gg":
        steps = first_order_rank_one(*(list(x) for x in zip(*blocks, strict=True)), beta) if blocks else []
    else:
        steps = [first_order_filter(*block, beta) for block in blocks]
    return {**contexts, **{name: dataclasses.replace(contexts[name], c_step=c) for name, c in zip(live, steps,
                                                                                              strict=True)}}


def prepare_sst(job: MergeJob, params: SSTParams) -> Prepared:
    """Subspaces, safety and utility Fisher factors (one pass per dataset, at the point `fisher_at`), the
    GEVP of every module; then `fisher_rounds` − 1 times the safety factors again at the filtered merge."""
    if len(params.utility_data) not in (1, len(job.adapters)):
        raise InputError(f"{len(params.utility_data)} utility data files for {len(job.adapters)} adapters "
                         "(give one per adapter, or one for all)")
    extra = [load_extra_adapter(params.safety_adapter, job)] if params.safety_adapter else []
    subspaces = job_subspaces(job, extra)
    source = FactorSource(job, subspaces, params, extra)
    point = start_point(job, params.fisher_at)
    safety, *utility = source.factors([params.safety_data, *params.utility_data], point)
    live = [name for name, sub in subspaces.items() if sub.p and sub.q]
    utility_factors = {name: pooled(utility, job.weights, params.utility_pooling, name) for name in live}

    def build(factors: dict[str, KFACFactors], previous: dict[str, SSTContext] | None
              ) -> tuple[dict[str, SSTContext], dict[str, Any]]:
        contexts: dict[str, SSTContext] = {}
        for name, sub in subspaces.items():
            if name not in utility_factors:
                contexts[name] = SSTContext(sub, None, len(job.adapters))
                continue
            A_u, G_u, D_u = utility_factors[name]
            eig: Eigenbasis = (kronecker_gevp(factors[name].A, factors[name].G, A_u, G_u, params.damping, name)
                               if params.fisher == "kfac" else diagonal_gevp(factors[name].diag, D_u, params.damping,
                                                                             name))
            delta_u = utility_core(sub, job.weights)
            if previous is not None:
                anchor = filtered_utility_core(previous[name], params)
            else:
                anchor = delta_u if point.label == "ta" else torch.zeros_like(delta_u)
            contexts[name] = SSTContext(sub, eig, len(job.adapters), eig.coefficients(delta_u),
                                        grad=factors[name].grad, anchor=anchor)
        facts: dict[str, Any] = {}
        if params.beta is None and params.hard_top is None:
            spectra = [(ctx.lam, ctx.c_u) for ctx in contexts.values() if ctx.eig is not None]
            beta = (beta_for_safety_energy(spectra, 2.0 * params.safety_budget) if params.safety_budget is not None
                    else calibrate_beta(spectra, params.safety_share))
            contexts = {name: dataclasses.replace(ctx, beta=beta) for name, ctx in contexts.items()}
            facts["beta"] = beta
        if params.first_order:
            contexts = with_first_order_step(contexts, params)
        return contexts, facts

    def merged_point(contexts: dict[str, SSTContext], label: str) -> FisherPoint:
        cores = {name: merged_core(ctx, params) for name, ctx in contexts.items() if ctx.eig is not None}
        return core_point(label, subspaces, cores)

    contexts, rounds = iterate_safety(source, params.safety_data, params.fisher_rounds, (point, safety), build,
                                      merged_point)
    facts = {"fisher_at": point.label, "rounds": rounds, "utility_nll": [factors_nll(u) for u in utility]}
    return Prepared(contexts, facts)


def safety_energies(contexts: dict[str, SSTContext], params: SSTParams) -> tuple[float, float]:
    """(Σλc_u², Σλc'²) over all modules: vec(δ)ᵀ F_s vec(δ) of the task-arithmetic update and of the
    filtered one (the last round's F_s, a per-position Fisher, so in nats per position)."""
    before = after = 0.0
    for ctx in contexts.values():
        if ctx.eig is None:
            continue
        before += safety_energy(ctx.eig.lam, ctx.c_u)
        after += safety_energy(ctx.eig.lam, filter_coefficients(ctx, params)[0])
    return before, after


def utility_lost_share(contexts: dict[str, SSTContext], params: SSTParams) -> float | None:
    """Share of the task-arithmetic update's utility-Fisher energy that the filter moves it by (all
    modules, `gevp.utility_energy_lost`): the utility price the objective itself puts on the merge."""
    return utility_energy_lost((ctx.c_u, filter_coefficients(ctx, params)[0])
                               for ctx in contexts.values() if ctx.eig is not None and ctx.c_u is not None)


def update_spectrum(contexts: dict[str, SSTContext]) -> list[dict[str, float]]:
    """Where the task-arithmetic update's utility and safety energy sit along λ (`gevp.energy_spectrum`)."""
    return energy_spectrum((ctx.eig.lam, ctx.c_u) for ctx in contexts.values()
                           if ctx.eig is not None and ctx.c_u is not None)


def first_order_prediction(contexts: dict[str, SSTContext], params: SSTParams) -> float:
    """The change of the safety loss (nats per position) that the first-order model predicts for the
    merge, from the point it was taken at: Σ_modules ĝ·(c'−c_a) + ½ Σ λ (c'−c_a)². A drop larger than
    the loss there (`safety_loss_per_position`) means the step left the range where the model can hold."""
    linear = quadratic = 0.0
    for ctx in contexts.values():
        if ctx.eig is None or ctx.grad is None or ctx.anchor is None:
            continue
        step = filter_coefficients(ctx, params)[0] - ctx.coefficients(ctx.anchor)
        linear += float((ctx.eig.natural_coefficients(ctx.grad) * step).sum())
        quadratic += 0.5 * float((ctx.eig.lam * step**2).sum())
    # with F_s + ggᵀ the curvature adds ½ (gᵀs)²
    return linear + quadratic + (0.5 * linear**2 if params.first_order_curvature == "kfac+gg" else 0.0)


def resolve_sst(prepared: Prepared, params: SSTParams) -> dict[str, Any]:
    """The filter a merge used — β (given, or calibrated, with its rule) or ρ — the safety energy it
    removed and the utility energy it cost, where both sit along λ, the Fisher points with the safety
    NLL there, and the pooling."""
    contexts: dict[str, SSTContext] = prepared.modules
    if params.hard_top is not None:
        chosen: dict[str, Any] = {"filter": "hard_top", "hard_top": params.hard_top}
    elif params.beta is not None:
        chosen = {"filter": "soft", "beta": params.beta, "beta_source": "given"}
    else:
        rule = (f"leaves safety_budget = {params.safety_budget} nats per position of the safety term"
                if params.safety_budget is not None else
                f"removes safety_share = {params.safety_share} of the task-arithmetic update's safety-Fisher energy")
        chosen = {"filter": "soft", "beta": prepared.facts["rounds"][-1]["beta"], "beta_source": f"calibrated: {rule}"}
    predicted = {"first_order_curvature": params.first_order_curvature,
                 "first_order_predicted_change": first_order_prediction(contexts, params)} if params.first_order else {}
    before, after = safety_energies(contexts, params)
    return {
        **chosen,
        "first_order": params.first_order,
        **predicted,
        # share of the TA update's Σλc_u² (last round's F_s) the filtered utility update no longer has
        "safety_energy_removed": 1.0 - after / before if before > 0 else None,
        # ½ vec(δ)ᵀ F_s vec(δ), nats per position: the filter's safety term for the TA update and the merge
        "safety_quadratic_ta": 0.5 * before,
        "safety_quadratic_merge": 0.5 * after,
        "utility_energy_lost": utility_lost_share(contexts, params),
        "energy_spectrum": update_spectrum(contexts),
        "fisher": params.fisher,
        "utility_pooling": params.utility_pooling,
        **prepared.facts,
    }


def merge_sst(inputs: ModuleInputs, params: SSTParams) -> Factored:
    """Filter the utility core of one module and inject the safety core; returns U core · Vᵀ factored."""
    ctx: SSTContext = inputs.context
    d_out, d_in = inputs.shape
    if ctx.eig is None:  # every update of this module is zero
        return Factored(B=torch.zeros(d_out, 1), A=torch.zeros(1, d_in))
    return Factored.in_bases(ctx.subspace.U, merged_core(ctx, params), ctx.subspace.V)


SST = register(
    MergeMethod(
        name="sst",
        summary="SST-Merge: task arithmetic filtered by the safety/utility Fisher GEVP, safety adapter injected",
        reference="DESIGN.md §5 (this project)",
        params=SSTParams,
        merge_module=merge_sst,
        prepare=prepare_sst,
        resolve=resolve_sst,
    )
)

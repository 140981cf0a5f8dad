"""Safe LoRA (Hsu et al. 2024, arXiv 2405.16833) and SafeMERGE (Djuhera et al. 2025, arXiv 2503.17239):
baselines built on the alignment matrix between the aligned base and the unaligned model it came from.

Per adapted module, V = W_base − W_original (d_out, d_in) is what alignment changed, and
C = V Vᵀ / ‖V‖_F (d_out, d_out) the references' "projection" onto V's column space (their formula
exactly: C is symmetric PSD but not idempotent). An update ΔW is compared with its image,
cos = ⟨CΔW, ΔW⟩_F / (‖CΔW‖_F ‖ΔW‖_F): a low cosine says the update leaves the alignment subspace.

* `safe_lora`: where cos ≤ τ, ΔW ← CΔW (github.com/IBM/SafeLoRA, model.py, projects lora_B: C B A = C ΔW).
  `apply_to` "experts" (default) tests and projects each expert's update on its own, then takes the
  weighted sum: Safe LoRA as designed (one fine-tuned LoRA at a time), per issue 14; "merge" treats
  the task-arithmetic update Σ w_k ΔW_k as the one fine-tuned update. `num_proj_layers` replaces τ
  by the reference's "number" mode: the modules with the lowest cosines are projected (each
  expert's own, or the merge's), ties at the cut included. τ = 0.5 is the reference's default
  `threshold` (SafeLoRAConfig).
* `safemerge`: where the task-arithmetic update's cos < τ (SafeMERGE's strict inequality),
  ΔW ← (1 − a) ΔW + a ΔW_safety with a = `safety_weight`; τ = 0.35 and a = 0.2 are the defaults of
  github.com/aladinD/SafeMERGE (get_safemerge_model.py: weighting [0.8, 0.2]). Only on the merged
  update: per expert, K deviating experts would each add a·ΔW_safety.

Where this deviates from the references, and why:
1. Cosines are not rounded to 5 decimals; only exact ties at the 5th decimal can differ.
2. A module alignment did not change (V = 0) has no direction to project onto and is left as it is
   (IBM's code divides by ‖V‖ = 0: NaN, the comparison fails, the update stays; SafeMERGE's code sets
   C = 0, which would delete the update there).
3. SafeMERGE mixes the ΔW, not PEFT's factor-wise lora_A/lora_B weighting (which is not the mix of the
   ΔW, DESIGN §6); a module the safety adapter lacks keeps the merged update (the reference zeroes it).
4. C is never formed: C B = V (Vᵀ B) / ‖V‖_F for a LoRA factor B (d_out, r), and the cosine comes from
   r×r Gram matrices, so the output stays exactly low-rank. The base's and the original's weights
   are read one module at a time from their safetensors files: memory O(one module).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import DirectoryPath, Field

from sst_merge.base_model import read_weight, stored_weight_index
from sst_merge.errors import InputError
from sst_merge.lora import LoraFactors
from sst_merge.methods.base import Factored, MergeJob, MergeMethod, MethodParams, ModuleInputs, Prepared
from sst_merge.methods.fisher_setup import load_extra_adapter
from sst_merge.methods.registry import register
from sst_merge.methods.ta import weighted_factors
from sst_merge.progress import track


class AlignmentParams(MethodParams):
    """What both methods need: the unaligned original of the base, and the cosine threshold τ."""

    original: DirectoryPath = Field(description="the unaligned model the base was aligned from (HF directory "
                                                "with safetensors); V = W_base − W_original per module")
    threshold: float = Field(0.5, ge=-1.0, le=1.0, description="τ: treat a module where cos(CΔW, ΔW) is at most τ")


class SafeLoRAParams(AlignmentParams):
    """Safe LoRA: τ or the number of modules to project, and which updates are tested."""

    num_proj_layers: int | None = Field(None, ge=1, description="instead of τ: project this many modules of lowest "
                                                                "cosine (per expert, or of the merge)")
    apply_to: Literal["experts", "merge"] = Field("experts", description="test and project each expert's update, "
                                                                         "or the task-arithmetic merge's")


class SafeMergeParams(AlignmentParams):
    """SafeMERGE: the safety adapter mixed in where the merged update leaves the alignment subspace."""

    threshold: float = Field(0.35, ge=-1.0, le=1.0, description="τ: mix in the safety adapter where cos < τ")
    safety_adapter: Path = Field(description="PEFT safety adapter mixed into the deviating modules")
    safety_weight: float = Field(0.2, ge=0.0, le=1.0, description="a: ΔW ← (1 − a) ΔW + a ΔW_safety there")


@dataclass(frozen=True)
class Tested:
    """One update of one module, low-rank: ΔW = B (d_out, r) @ A (r, d_in) (weight and LoRA scale in B),
    its image C B (None where V = 0), the cosine (None where V = 0 or ΔW = 0), whether it is treated,
    and which slot of the "number" ranking it belongs to (expert k, or 0 for the merge)."""

    B: torch.Tensor
    A: torch.Tensor
    CB: torch.Tensor | None
    cos: float | None
    slot: int
    treated: bool = False


def aligned_image(V: torch.Tensor, B: torch.Tensor) -> torch.Tensor | None:
    """C B = V (Vᵀ B) / ‖V‖_F (d_out, r) for V (d_out, d_in), B (d_out, r), float64; None when V = 0."""
    norm = float(V.norm())
    if norm == 0.0:
        return None
    V = V.double()
    return V @ (V.T @ B.double()) / norm


def image_cosine(B: torch.Tensor, CB: torch.Tensor | None, A: torch.Tensor) -> float | None:
    """cos(C B A, B A) over all entries, from r×r Grams: ⟨X A, Y A⟩_F = tr(Xᵀ Y · A Aᵀ). None when undefined."""
    if CB is None:
        return None
    B, CB, A = B.double(), CB.double(), A.double()
    gram = A @ A.T
    inner = float(torch.trace(CB.T @ B @ gram))
    norms = float(torch.trace(CB.T @ CB @ gram)) * float(torch.trace(B.T @ B @ gram))
    return inner / norms**0.5 if norms > 0 else None


def treated_mask(tested: list[Tested], threshold: float, count: int | None, strict: bool) -> list[bool]:
    """Which updates are treated: cos ≤ τ (cos < τ if `strict`), or with `count` the `count` lowest cosines of
    each slot (the reference's cut: the count-th lowest value, ties included). No cosine: never."""
    cuts: dict[int, float] = {}
    if count is not None:
        for slot in {t.slot for t in tested}:
            values = sorted(t.cos for t in tested if t.slot == slot and t.cos is not None)
            if values:
                cuts[slot] = values[: count][-1]
    mask = []
    for t in tested:
        limit = cuts.get(t.slot) if count is not None else threshold
        if t.cos is None or limit is None:
            mask.append(False)
        else:
            mask.append(t.cos < limit if strict else t.cos <= limit)
    return mask


def alignment_sources(job: MergeJob, original: Path) -> tuple[dict, dict]:
    """The safetensors index of the base and of the original, checked to hold every merged module with the
    base's shape: all before any weight is read."""
    base_index = stored_weight_index(job.base)
    if base_index is None:
        raise InputError("no safetensors checkpoint: the alignment matrix is read from safetensors files", job.base)
    original_index = stored_weight_index(original)
    if original_index is None:
        raise InputError("no model.safetensors or model.safetensors.index.json (the unaligned original is read "
                         "from safetensors)", original)
    for name in job.modules:
        if name not in base_index:
            raise InputError(f"no 2-D weight {name}.weight in the base's safetensors", job.base)
        if name not in original_index:
            raise InputError(f"no weight {name}.weight, which the adapters adapt", original)
        if original_index[name][1] != job.shapes[name]:
            raise InputError(f"{name}.weight has shape {list(original_index[name][1])}, the base's "
                             f"{list(job.shapes[name])}", original)
    return base_index, original_index


def tested_updates(job: MergeJob, original: Path, apply_to: str) -> dict[str, list[Tested]]:
    """Per module, the updates to test (each expert's, or the merge) with their images under C and cosines."""
    base_index, original_index = alignment_sources(job, original)
    out = {}
    for name in track(job.modules, "alignment matrix"):
        V = read_weight(job.base, base_index[name][0], name)
        V -= read_weight(original, original_index[name][0], name)
        experts = [a.modules.get(name) for a in job.adapters]
        if apply_to == "experts":
            pairs = [(k, weighted_factors([f], [w])) for k, (w, f) in enumerate(zip(job.weights, experts, strict=True))
                     if f is not None]
        else:
            pairs = [(0, weighted_factors(experts, job.weights))]
        tested = []
        for slot, update in pairs:
            CB = aligned_image(V, update.B)
            tested.append(Tested(update.B, update.A, CB, image_cosine(update.B, CB, update.A), slot))
        out[name] = tested
        del V
    return out


def with_mask(tested: dict[str, list[Tested]], threshold: float, count: int | None,
              strict: bool) -> dict[str, list[Tested]]:
    """`tested` with `treated` set by `treated_mask` over all modules together."""
    flat = [(name, i, t) for name, items in tested.items() for i, t in enumerate(items)]
    mask = treated_mask([t for _, _, t in flat], threshold, count, strict)
    out: dict[str, list[Tested]] = {name: list(items) for name, items in tested.items()}
    for (name, i, t), treated in zip(flat, mask, strict=True):
        out[name][i] = replace(t, treated=treated)
    return out


def treatment_record(modules: dict[str, list[Tested]]) -> dict[str, Any]:
    """How many updates were tested and treated, per slot, and the spread of the cosines."""
    slots = sorted({t.slot for items in modules.values() for t in items})
    cosines = [t.cos for items in modules.values() for t in items if t.cos is not None]
    per_slot = {s: [t for items in modules.values() for t in items if t.slot == s] for s in slots}
    return {
        "treated": [sum(t.treated for t in per_slot[s]) for s in slots],
        "tested": [sum(t.cos is not None for t in per_slot[s]) for s in slots],
        "cosine_min": min(cosines, default=None),
        "cosine_median": statistics.median(cosines) if cosines else None,
        "cosine_max": max(cosines, default=None),
    }


def prepare_safe_lora(job: MergeJob, params: SafeLoRAParams) -> Prepared:
    """Every module's updates tested against the alignment matrix; those below τ (or the lowest) marked."""
    modules = with_mask(tested_updates(job, params.original, params.apply_to), params.threshold,
                        params.num_proj_layers, strict=False)
    return Prepared(modules, treatment_record(modules))


def resolve_safe_lora(prepared: Prepared, params: SafeLoRAParams) -> dict[str, Any]:
    """The rule applied and what it projected ("treated" per expert, or for the merge)."""
    rule = {"num_proj_layers": params.num_proj_layers} if params.num_proj_layers else {"threshold": params.threshold}
    return {**rule, "apply_to": params.apply_to, **prepared.facts}


def merge_safe_lora(inputs: ModuleInputs, params: SafeLoRAParams) -> Factored:
    """Σ of the module's updates, each replaced by C ΔW = (C B) A where it is treated; exact and low-rank."""
    tested: list[Tested] = inputs.context
    B = torch.cat([t.CB.float() if t.treated and t.CB is not None else t.B for t in tested], dim=1)
    return Factored(B=B, A=torch.cat([t.A for t in tested], dim=0))


@dataclass(frozen=True)
class SafeMergeModule:
    """One module of SafeMERGE: the merged update tested, and the safety adapter's factors (None if it lacks it)."""

    tested: Tested
    safety: LoraFactors | None


def prepare_safemerge(job: MergeJob, params: SafeMergeParams) -> Prepared:
    """The task-arithmetic update of every module tested against the alignment matrix (cos < τ marked)."""
    safety = load_extra_adapter(params.safety_adapter, job)
    modules = with_mask(tested_updates(job, params.original, "merge"), params.threshold, None, strict=True)
    return Prepared({name: SafeMergeModule(items[0], safety.modules.get(name)) for name, items in modules.items()},
                    treatment_record(modules))


def resolve_safemerge(prepared: Prepared, params: SafeMergeParams) -> dict[str, Any]:
    """τ, a and how many modules got the safety adapter mixed in."""
    return {"threshold": params.threshold, "safety_weight": params.safety_weight, **prepared.facts}


def merge_safemerge(inputs: ModuleInputs, params: SafeMergeParams) -> Factored:
    """(1 − a) ΔW_TA + a ΔW_safety where treated (and the safety adapter has the module), else ΔW_TA."""
    module: SafeMergeModule = inputs.context
    t, a = module.tested, params.safety_weight
    if not t.treated or module.safety is None:
        return Factored(B=t.B, A=t.A)
    s = module.safety
    return Factored(B=torch.cat([(1.0 - a) * t.B, a * s.scale * s.B], dim=1), A=torch.cat([t.A, s.A], dim=0))


SAFE_LORA = register(
    MergeMethod(
        name="safe_lora",
        summary="Safe LoRA: project updates that leave the alignment subspace (W_base − W_original) onto it",
        reference="https://arxiv.org/abs/2405.16833",
        params=SafeLoRAParams,
        merge_module=merge_safe_lora,
        prepare=prepare_safe_lora,
        resolve=resolve_safe_lora,
    )
)

SAFEMERGE = register(
    MergeMethod(
        name="safemerge",
        summary="SafeMERGE: mix the safety adapter into modules whose merged update leaves the alignment subspace",
        reference="https://arxiv.org/abs/2503.17239",
        params=SafeMergeParams,
        merge_module=merge_safemerge,
        prepare=prepare_safemerge,
        resolve=resolve_safemerge,
    )
)

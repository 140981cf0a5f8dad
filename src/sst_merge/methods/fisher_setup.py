"""What SST and AGL share before any module is merged: subspaces of all updates and Fisher factors in them.

Not a merge method itself. One model load, one Fisher pass per (dataset, point) — skipped when the
content-hash cache has the factors —, optional data-parallel sharding with an all-reduce of sums and
counts.

Where the Fisher is taken (`fisher_at`, `fisher_rounds`): the safety Fisher is only informative where
the safety loss is alive. At a well-aligned base, on refusal data, the refusal NLL and its gradients
are ~0 (DESIGN §3, measured on the synthetic testbed: 9.8e-5 nats/token, safety factors 3.5e-9 of
the utility factors), and a filter built from them leaves the merged update's harmful directions untouched. The
merge does not live at the base but at base + ΔW, where the same rows cost nats per token. So both
Fishers are taken by default at the task-arithmetic point ("ta", base + Σ w_k ΔW_k): the safety one
because that is where refusal breaks, the utility one because SST's objective ½‖δ'−δ_u‖²_{F_u}
measures the utility lost by moving away from δ_u, i.e. its curvature around δ_u. With
`fisher_rounds` > 1 the safety Fisher (only) is taken again at base + the previous round's filtered
merge, where the merge then lives; the utility term stays centred on δ_u, so its Fisher stays where
it was.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch
from pydantic import Field

from sst_merge.chat_data import read_chat_jsonl
from sst_merge.devices import device_map_for
from sst_merge.fingerprints import dir_fingerprint, file_fingerprint, tensors_fingerprint
from sst_merge.fisher import FisherOptions, KFACFactors, Updates, fisher_pass
from sst_merge.fisher_cache import cache_key, cached_factors
from sst_merge.gevp import nearest_kronecker, pooling_weights
from sst_merge.lora import LoraAdapter, load_adapter, validate_against_base
from sst_merge.methods.base import MergeJob, MethodParams
from sst_merge.methods.ta import weighted_factors
from sst_merge.subspace import BASIS_KIND, UNION_RANK_RTOL, ModuleSubspace, module_subspace

Reducer = Callable[[dict[str, KFACFactors]], dict[str, KFACFactors]]
Contexts = TypeVar("Contexts")


class FisherPassParams(MethodParams):
    """How a Fisher pass runs, whatever data it reads (each caller names its datasets)."""

    fisher_kind: Literal["empirical", "true"] = Field(
        "empirical", description="empirical Fisher (data labels) or true Fisher (labels sampled from the model)"
    )
    fisher_at: Literal["base", "ta"] = Field(
        "ta", description="take the Fisher at base + the task-arithmetic merge (where the merge lives), or at the base"
    )
    fisher_max_examples: int = Field(256, ge=1, description="rows used from each data file")
    fisher_max_length: int = Field(512, ge=2, description="tokens per example (longer ones are cut)")
    fisher_batch_size: int = Field(8, ge=1, description="examples per forward/backward pass")
    fisher_seed: int = Field(0, description="seed of the label sampling of the true Fisher")
    cache_dir: Path | None = Field(None, description="directory of cached Fisher factors (reused across a sweep)")
    fisher_dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="dtype the model runs in during the Fisher pass (factors are always float64)"
    )

    def fisher_options(self) -> FisherOptions:
        """The FisherOptions these parameters describe."""
        return FisherOptions(self.fisher_kind, self.fisher_max_examples, self.fisher_max_length,
                             self.fisher_batch_size, self.fisher_seed)


class FisherParams(FisherPassParams):
    """Parameters shared by the Fisher-based methods: the pass, the safety data and the rounds."""

    safety_data: Path = Field(description="chat JSONL (prompt, response) of harmful prompts paired with refusals "
                                          "(prompts the base was not trained on: at its own training rows the "
                                          "refusal loss is ~0 and the Fisher says nothing)")
    fisher_rounds: int = Field(1, ge=1, le=10, description="re-take the safety Fisher at the filtered merge and "
                                                           "filter again, this many rounds in all")


@dataclass(frozen=True)
class FisherPoint:
    """Where a Fisher pass runs: the base plus `updates` ({module: (B, A)}, ΔW = B @ A; none: the base).

    `label` names it for the record ("base", "ta", "round 2"); `key` identifies it in the cache key
    (the merge weights for "ta", whose adapters the identity fingerprints anyway; a hash of the
    update tensors for a filtered merge).
    """

    label: str
    updates: Updates
    key: Any = None


def start_point(job: MergeJob, at: str) -> FisherPoint:
    """The point of `fisher_at`: the base, or base + Σ w_k ΔW_k (low-rank, per merged module)."""
    if at == "base":
        return FisherPoint("base", {})
    updates = {}
    for name in job.modules:
        ta = weighted_factors([a.modules.get(name) for a in job.adapters], job.weights)
        updates[name] = (ta.B, ta.A)
    return FisherPoint("ta", updates, {"weights": job.weights})


def core_point(label: str, subspaces: dict[str, ModuleSubspace], cores: dict[str, torch.Tensor]) -> FisherPoint:
    """The point base + U core Vᵀ per module (cores (p, q), e.g. a filtered merge), keyed by a hash of its tensors."""
    updates = {name: ((subspaces[name].U.double() @ core.double()).float(), subspaces[name].V.T.contiguous())
               for name, core in cores.items()}
    return FisherPoint(label, updates, tensors_fingerprint(updates))


def load_extra_adapter(path: Path, job: MergeJob) -> LoraAdapter:
    """Load an adapter beyond the merged ones (the safety adapter) and check it fits the base."""
    adapter = load_adapter(path)
    validate_against_base(adapter, job.shapes)
    return adapter


def job_subspaces(job: MergeJob, extra: Sequence[LoraAdapter] = ()) -> dict[str, ModuleSubspace]:
    """{module: subspace} of every merged module over the experts' and `extra` adapters' updates, in that order."""
    adapters = list(job.adapters) + list(extra)
    return {
        name: module_subspace([a.modules.get(name) for a in adapters], job.shapes[name], UNION_RANK_RTOL)
        for name in job.modules
    }


def identity(job: MergeJob, extra: Sequence[LoraAdapter], point: FisherPoint) -> dict[str, Any]:
    """What, besides data and options, decides the factors: base, adapters (in subspace order), the point."""
    return {
        "base": dir_fingerprint(job.base),
        "adapters": [dir_fingerprint(a.path) for a in list(job.adapters) + list(extra)],
        "modules": job.modules,
        "rank_rtol": UNION_RANK_RTOL,
        "basis": BASIS_KIND,
        "fisher_at": point.label,
        "point": point.key,
    }


class FactorSource:
    """K-FAC factors of chat datasets at Fisher points, for one job and its subspaces.

    Each (dataset, point) is one pass over the model, cached by content hash; the model is loaded once,
    and only if some pass is not in the cache. With `world` > 1 each process takes its shard of every
    dataset and `reduce` all-reduces the sums.
    """

    def __init__(self, job: MergeJob, subspaces: dict[str, ModuleSubspace], params: FisherPassParams,
                 extra: Sequence[LoraAdapter] = (), rank: int = 0, world: int = 1,
                 reduce: Reducer | None = None) -> None:
        self.job, self.params, self.extra = job, params, list(extra)
        self.rank, self.world, self.reduce = rank, world, reduce
        self.bases = {name: (s.U, s.V) for name, s in subspaces.items() if s.p and s.q}
        self._model: tuple[Any, Any] | None = None

    def _pass(self, path: Path, point: FisherPoint) -> dict[str, KFACFactors]:
        if self._model is None:
            from sst_merge.models import load_model

            self._model = load_model(self.job.base, dtype=self.params.fisher_dtype,
                                     device_map=device_map_for(self.params.device))
        model, tokenizer = self._model
        factors = fisher_pass(model, tokenizer, self.bases, path, self.params.fisher_options(), point.updates,
                              self.rank, self.world)
        return self.reduce(factors) if self.reduce is not None else factors

    def factors(self, datasets: Sequence[Path], point: FisherPoint) -> list[dict[str, KFACFactors]]:
        """The factors of each dataset at `point`, in order."""
        for path in datasets:
            read_chat_jsonl(path)  # a bad line is found before the model loads, not after
        options = self.params.fisher_options()
        ident = identity(self.job, self.extra, point)
        results = []
        for path in datasets:
            key = cache_key({**ident, "data": file_fingerprint(Path(path)), "dtype": self.params.fisher_dtype,
                             **options.key()})
            meta = {"data": str(path), "options": options.key(), "identity": ident}
            # Data-parallel: every process must join each all-reduce, so none may skip a pass on a cache hit;
            # rank 0 alone writes the cache.
            results.append(cached_factors(self.params.cache_dir if self.rank == 0 else None, key,
                                          lambda path=path: self._pass(Path(path), point), self.bases, meta,
                                          read=self.world == 1))
        return results


def iterate_safety(
    source: FactorSource,
    data: Path,
    rounds: int,
    first: tuple[FisherPoint, dict[str, KFACFactors]],
    build: Callable[[dict[str, KFACFactors], Contexts | None], tuple[Contexts, dict[str, Any]]],
    merged_point: Callable[[Contexts, str], FisherPoint],
) -> tuple[Contexts, list[dict[str, Any]]]:
    """Contexts built from the safety factors at the first point, then `rounds` − 1 times rebuilt from
    the safety factors taken at base + the merge the previous contexts give.

    `build(safety factors, previous contexts or None)` returns the contexts and facts of the round (a
    calibrated β); `merged_point(contexts, label)` the point their merge lands at. Returns the last
    round's contexts and each round's record: its point, the safety loss there (`pass_losses`) and
    the facts.
    """
    point, factors = first
    contexts, facts = build(factors, None)
    history = [{"point": point.label, **pass_losses(factors), **facts}]
    for round_number in range(2, rounds + 1):
        point = merged_point(contexts, f"round {round_number}")
        (factors,) = source.factors([data], point)
        contexts, facts = build(factors, contexts)
        history.append({"point": point.label, **pass_losses(factors), **facts})
    return contexts, history


def factors_nll(factors: dict[str, KFACFactors]) -> float | None:
    """The data's NLL (nats per response token) of a pass; every module of a pass records the same."""
    return next(iter(factors.values())).nll if factors else None


def pass_losses(factors: dict[str, KFACFactors]) -> dict[str, float | None]:
    """A pass's loss for the record: NLL per response token, and per position (the unit of g and F)."""
    first = next(iter(factors.values()), None)
    return {"safety_nll": first.nll if first else None,
            "safety_loss_per_position": first.loss_per_position if first else None}


UtilityPooling = Literal["kronecker", "means"]


def pooled(
    sets: Sequence[dict[str, KFACFactors]], weights: Sequence[float], pooling: UtilityPooling, name: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Ā (q, q), Ḡ (p, p), diagonal (p, q)) of module `name` pooled over the tasks' Fishers.

    Task k counts π_k = |w_k|/Σ|w| (its merge weight; one set: itself). The pooled Fisher is
    Σ_k π_k Ā_k ⊗ Ḡ_k, which is no Kronecker product: "kronecker" takes the nearest one in Frobenius
    norm (`gevp.nearest_kronecker`), "means" the product of the weighted means (Σ π Ā_k) ⊗ (Σ π Ḡ_k),
    which adds the cross terms Ā_k ⊗ Ḡ_l. The diagonal is exact either way: Σ_k π_k diag_k, O(pq).
    """
    pi = pooling_weights(weights) if len(sets) > 1 else torch.ones(1, dtype=torch.float64)
    As, Gs = [s[name].A for s in sets], [s[name].G for s in sets]
    D = sum(float(w) * s[name].diag for w, s in zip(pi, sets, strict=True))
    if pooling == "kronecker" and len(sets) > 1:
        A, G = nearest_kronecker(As, Gs, pi)
    else:
        A = sum(float(w) * a for w, a in zip(pi, As, strict=True))
        G = sum(float(w) * g for w, g in zip(pi, Gs, strict=True))
    return A, G, D

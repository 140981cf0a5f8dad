"""What SST and AGL share before any module is merged: subspaces of all updates and Fisher factors in them.

Not a merge method itself. One model load, one Fisher pass per dataset (skipped when the content-hash
cache has the factors), optional data-parallel sharding with an all-reduce of sums and counts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field

from sst_merge.fisher import (
    FisherOptions,
    KFACFactors,
    cache_key,
    cached_factors,
    dir_fingerprint,
    file_fingerprint,
    fisher_pass,
    read_chat_jsonl,
)
from sst_merge.lora import LoraAdapter, load_adapter, validate_against_base
from sst_merge.methods.base import MergeJob, MethodParams
from sst_merge.subspace import BASIS_KIND, RANK_RTOL, ModuleSubspace, module_subspace

Reducer = Callable[[dict[str, KFACFactors]], dict[str, KFACFactors]]


class FisherParams(MethodParams):
    """Parameters of the Fisher pass shared by the Fisher-based methods."""

    safety_data: Path = Field(description="chat JSONL (prompt, response) of harmful prompts paired with refusals")
    fisher_kind: Literal["empirical", "true"] = Field(
        "empirical", description="empirical Fisher (data labels) or true Fisher (labels sampled from the model)"
    )
    fisher_at: Literal["base", "ta"] = Field(
        "base", description="take the Fisher at the base model, or at base + the task-arithmetic merge"
    )
    fisher_max_examples: int = Field(256, ge=1, description="rows used from each data file")
    fisher_max_length: int = Field(512, ge=2, description="tokens per example (longer ones are cut)")
    fisher_batch_size: int = Field(8, ge=1, description="examples per forward/backward pass")
    fisher_seed: int = Field(0, description="seed of the label sampling of the true Fisher")
    cache_dir: Path | None = Field(None, description="directory of cached Fisher factors (reused across a sweep)")
    device: str = Field("cpu", description="device of the Fisher pass: cpu, cuda, or auto (shard over the GPUs)")
    fisher_dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="dtype the model runs in during the Fisher pass (factors are always float64)"
    )

    def fisher_options(self) -> FisherOptions:
        """The FisherOptions these parameters describe."""
        return FisherOptions(self.fisher_kind, self.fisher_max_examples, self.fisher_max_length,
                             self.fisher_batch_size, self.fisher_seed)


def load_extra_adapter(path: Path, job: MergeJob) -> LoraAdapter:
    """Load an adapter beyond the merged ones (the safety adapter) and check it fits the base."""
    adapter = load_adapter(path)
    validate_against_base(adapter, job.shapes)
    return adapter


def job_subspaces(job: MergeJob, extra: Sequence[LoraAdapter] = ()) -> dict[str, ModuleSubspace]:
    """{module: subspace} of every merged module over the experts' and `extra` adapters' updates, in that order."""
    adapters = list(job.adapters) + list(extra)
    return {
        name: module_subspace([a.modules.get(name) for a in adapters], job.shapes[name], RANK_RTOL)
        for name in job.modules
    }


def ta_deltas(job: MergeJob) -> dict[str, torch.Tensor]:
    """Dense Σ w_k ΔW_k per merged module: the point the Fisher is taken at with fisher_at="ta"."""
    deltas = {}
    for name in job.modules:
        deltas[name] = sum(
            (w * a.modules[name].delta() for w, a in zip(job.weights, job.adapters, strict=True) if name in a.modules),
            torch.zeros(job.shapes[name]),
        )
    return deltas


def identity(job: MergeJob, extra: Sequence[LoraAdapter], fisher_at: str) -> dict[str, Any]:
    """What, besides data and options, decides the factors: base, adapters (in subspace order), the point."""
    return {
        "base": dir_fingerprint(job.base),
        "adapters": [dir_fingerprint(a.path) for a in list(job.adapters) + list(extra)],
        "modules": job.modules,
        "rank_rtol": RANK_RTOL,
        "basis": BASIS_KIND,
        "fisher_at": fisher_at,
        "weights": job.weights if fisher_at == "ta" else None,
    }


def device_map_for(device: str) -> str | None:
    """The `load_model` device map of a `device` setting: None (one CPU) for cpu, or for auto without CUDA."""
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return None
    return device


def factor_sets(
    job: MergeJob,
    subspaces: dict[str, ModuleSubspace],
    datasets: Sequence[Path],
    params: FisherParams,
    extra: Sequence[LoraAdapter] = (),
    rank: int = 0,
    world: int = 1,
    reduce: Reducer | None = None,
) -> list[dict[str, KFACFactors]]:
    """K-FAC factors of every dataset (one pass each, over the base model), cached by content hash.

    With `world` > 1 each process takes its shard of every dataset and `reduce` all-reduces the sums.
    The model is loaded only if some dataset is not in the cache.
    """
    for path in datasets:
        read_chat_jsonl(path)  # a bad line is found before the model loads, not after
    options = params.fisher_options()
    bases = {name: (s.U, s.V) for name, s in subspaces.items() if s.p and s.q}
    ident = identity(job, extra, params.fisher_at)
    loaded: dict[str, Any] = {}

    def compute(path: Path) -> dict[str, KFACFactors]:
        if not loaded:
            from sst_merge.models import load_model

            model, tokenizer = load_model(job.base, dtype=params.fisher_dtype, device_map=device_map_for(params.device))
            loaded.update(model=model, tokenizer=tokenizer)
        deltas = ta_deltas(job) if params.fisher_at == "ta" else None
        factors = fisher_pass(loaded["model"], loaded["tokenizer"], bases, path, options, deltas, rank, world)
        return reduce(factors) if reduce is not None else factors

    results = []
    for path in datasets:
        key = cache_key({**ident, "data": file_fingerprint(Path(path)), "dtype": params.fisher_dtype, **options.key()})
        meta = {"data": str(path), "options": options.key(), "identity": ident}
        # Data-parallel: every process must join each all-reduce, so none may skip a pass on a cache hit;
        # rank 0 alone writes the cache.
        results.append(cached_factors(params.cache_dir if rank == 0 else None, key,
                                      lambda path=path: compute(Path(path)), bases, meta, read=world == 1))
    return results


def pooled(sets: Sequence[dict[str, KFACFactors]], name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Ā, Ḡ, diag) of module `name` averaged over datasets with equal weight per dataset (task)."""
    A = sum(s[name].A for s in sets) / len(sets)
    G = sum(s[name].G for s in sets) / len(sets)
    D = sum(s[name].diag for s in sets) / len(sets)
    return A, G, D

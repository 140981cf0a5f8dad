"""What a merge method is: a spec (name, typed parameters, reference) next to a per-module kernel."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from sst_merge.devices import DEVICE_HELP, Device, check_device
from sst_merge.lora import LoraAdapter, LoraFactors, delta_row_blocks


class MethodParams(BaseModel):
    """Base of every method's parameters: unknown keys are an error. `device` says where the merge
    computes (every method takes it: the kernels, the dense SVD and any Fisher pass run there)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device: Device = Field("cpu", description=DEVICE_HELP)

    @field_validator("device")
    @classmethod
    def _device_available(cls, device: str) -> str:
        return check_device(device)


class SparsifyParams(MethodParams):
    """Parameters of the methods that trim or drop entries of each task's ΔW."""

    density: float = Field(0.5, gt=0.0, le=1.0, description="fraction of each task's ΔW entries kept")


class SeededSparsifyParams(SparsifyParams):
    """Random dropping (DARE) needs a seed: same seed, same bytes."""

    seed: int = Field(0, description="seed of the per-module random generators")


@dataclass(frozen=True)
class Dense:
    """A merged update stored densely: ΔW (d_out, d_in) float32."""

    delta: torch.Tensor

    def dense(self, out: torch.Tensor | None = None, device: torch.device | None = None) -> torch.Tensor:
        """ΔW (d_out, d_in); already dense, so `out` and `device` are not used."""
        return self.delta


@dataclass(frozen=True)
class Factored:
    """A merged update kept low-rank: ΔW = B @ A with B (d_out, R), A (R, d_in), float32.

    `bases`, when given, is (U (d_out, p), core (p, q), V (d_in, q)) with orthonormal columns in U
    and V, B = U core and A = Vᵀ: then ΔW's exact SVD needs only the small core's.
    """

    B: torch.Tensor
    A: torch.Tensor
    bases: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def in_bases(cls, U: torch.Tensor, core: torch.Tensor, V: torch.Tensor) -> Factored:
        """ΔW = U core Vᵀ for orthonormal U (d_out, p), V (d_in, q): B = U core, A = Vᵀ, bases kept."""
        return cls(B=(U.double() @ core).float(), A=V.T.contiguous(), bases=(U, core, V))

    def dense(self, out: torch.Tensor | None = None, device: torch.device | None = None) -> torch.Tensor:
        """ΔW = B @ A (d_out, d_in), written into `out` when given (a buffer reused across modules);
        multiplied on `device` when that is not the CPU, and copied back."""
        if device is not None and device.type != "cpu":
            product = self.B.to(device) @ self.A.to(device)
            return out.copy_(product) if out is not None else product.cpu()
        return torch.matmul(self.B, self.A, out=out) if out is not None else self.B @ self.A


MergedDelta = Dense | Factored


@dataclass(frozen=True)
class ModuleInputs:
    """Everything a kernel sees for one base module.

    experts[k] is adapter k's factors for this module, or None where adapter k does not adapt it
    (its ΔW is then zero). `generator` is seeded from (seed, module name), so results do not depend
    on the order modules are processed in. `context` is what the method's `prepare` returned for
    this module (e.g. Fisher factors), else None. The experts' ΔW blocks are formed on `device`; the
    factors, the generator and the merged result stay on the CPU.
    """

    name: str
    shape: tuple[int, int]
    experts: list[LoraFactors | None]
    weights: list[float]
    generator: torch.Generator
    context: Any = None
    device: torch.device = torch.device("cpu")

    @property
    def weight_tensor(self) -> torch.Tensor:
        """The merge weights (K,) on `device`."""
        return torch.tensor(self.weights, device=self.device)

    # The experts' ΔW as a `merge_ops.StackedRows`: computed row block by row block, never all at once.
    def count(self) -> int:
        return len(self.experts)

    def blocks(self) -> list[slice]:
        return delta_row_blocks(*self.shape)

    def rows(self, rows: slice) -> torch.Tensor:
        """(K, len(rows), d_in): rows `rows` of every expert's ΔW (zeros where an expert lacks the module).

        Experts of one rank are multiplied in one batched matmul (a single call instead of K: at rank 16
        the calls, not the arithmetic, were most of the cost), then scaled: the same bits as each
        expert's `delta_rows`, which the tests check.
        """
        out = torch.empty(len(self.experts), rows.stop - rows.start, self.shape[1], device=self.device)
        for tasks, B, A, scales in self._rank_groups:
            if len(tasks) == len(self.experts):
                torch.bmm(B[:, rows], A, out=out).mul_(scales)
            else:
                out[tasks] = torch.bmm(B[:, rows], A).mul_(scales)
        for k, factors in enumerate(self.experts):
            if factors is None:
                out[k] = 0
        return out

    @cached_property
    def _rank_groups(self) -> list[tuple[list[int], torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(task indices, B (n, d_out, r), A (n, r, d_in), scales (n, 1, 1)) per rank among the experts."""
        by_rank: dict[int, list[int]] = {}
        for k, factors in enumerate(self.experts):
            if factors is not None:
                by_rank.setdefault(factors.rank, []).append(k)
        groups = []
        for tasks in by_rank.values():
            experts = [self.experts[k] for k in tasks]
            groups.append((tasks, torch.stack([f.B for f in experts]).to(self.device),
                           torch.stack([f.A for f in experts]).to(self.device),
                           torch.tensor([f.scale for f in experts], device=self.device).reshape(-1, 1, 1)))
        return groups

    def entries(self, flat: torch.Tensor) -> torch.Tensor:
        """(K, len(flat)) on `device`: every expert's ΔW at the CPU flat indices `flat`, without forming
        ΔW (computed on the CPU, where the factors are: a few thousand entries)."""
        out = torch.zeros(len(self.experts), flat.numel(), device="cpu")
        row, col = flat // self.shape[1], flat % self.shape[1]
        for k, factors in enumerate(self.experts):
            if factors is not None:
                out[k] = factors.scale * (factors.B[row] * factors.A[:, col].T).sum(dim=1)
        return out.to(self.device)


@dataclass(frozen=True)
class MergeJob:
    """The validated inputs of a merge, handed to a method's `prepare` before any module is merged."""

    base: Path
    adapters: list[LoraAdapter]
    weights: list[float]
    modules: list[str]
    shapes: dict[str, tuple[int, int]]


@dataclass(frozen=True)
class Prepared:
    """What a method's `prepare` found: each module's context ({module name: context}) and whole-merge
    facts (a calibrated β, the safety loss at each Fisher point, …) for the record."""

    modules: dict[str, Any] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MergeMethod:
    """A merge method: spec and kernel. Adding a method means adding one file that defines one of these.

    `merge_module(inputs, params)` merges one module. `prepare(job, params)`, when given, does the
    whole-model work first (a Fisher pass, say) and returns a `Prepared`; `merge_adapters` passes each
    module's entry as `ModuleInputs.context`. `resolve(prepared, params)`, when given, says which
    settings a merge with `params` really used (the β it calibrated, how many modules it projected):
    JSON-able, recorded in the report and the provenance; without it the record is `prepared.facts`.
    """

    name: str
    summary: str
    reference: str
    params: type[MethodParams]
    merge_module: Callable[[ModuleInputs, Any], MergedDelta]
    prepare: Callable[[MergeJob, Any], Prepared] | None = None
    resolve: Callable[[Prepared, Any], dict[str, Any]] | None = None

    def resolved(self, prepared: Prepared, params: MethodParams) -> dict[str, Any]:
        """The settings a merge with `params` used, given what `prepare` found."""
        return self.resolve(prepared, params) if self.resolve is not None else dict(prepared.facts)


def module_generator(seed: int, module: str) -> torch.Generator:
    """A CPU generator seeded from (seed, module name): reproducible and independent of module order."""
    digest = hashlib.sha256(f"{seed}:{module}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))

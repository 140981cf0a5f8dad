"""The shared subspace: orthonormal union bases, exact cores, mixed ranks and partial targets."""

from __future__ import annotations

from pathlib import Path

import torch

from sst_merge.base_model import linear_shapes
from sst_merge.lora import LoraFactors, load_adapter
from sst_merge.subspace import module_subspace, union_basis


def test_cores_reproduce_every_delta(tiny_base: Path, tiny_adapters: list[Path]) -> None:
    """U C_k Vᵀ = ΔW_k for every adapter and module (mixed ranks, rsLoRA, a partial-target adapter)."""
    adapters = [load_adapter(p) for p in tiny_adapters]
    shapes = linear_shapes(tiny_base)
    modules = sorted(set().union(*(a.modules for a in adapters)))
    for name in modules:
        updates = [a.modules.get(name) for a in adapters]
        sub = module_subspace(updates, shapes[name])
        assert torch.allclose(sub.U.T @ sub.U, torch.eye(sub.p), atol=1e-5)
        assert torch.allclose(sub.V.T @ sub.V, torch.eye(sub.q), atol=1e-5)
        assert sub.p <= sum(f.rank for f in updates if f is not None)
        for factors, core in zip(updates, sub.cores, strict=True):
            if factors is None:
                assert core is None
                continue
            delta = factors.delta()
            assert torch.allclose(sub.expand(core), delta, atol=1e-5 * float(delta.abs().max()))


def test_union_rank_counts_shared_directions() -> None:
    """Two updates sharing a column direction give p = 3, not 4; a zero update adds nothing."""
    gen = torch.Generator().manual_seed(0)
    b = torch.randn(10, 2, generator=gen)
    shared = torch.cat([b[:, :1] * 5.0, torch.randn(10, 1, generator=gen)], dim=1)
    a1, a2 = torch.randn(2, 7, generator=gen), torch.randn(2, 7, generator=gen)
    zero = LoraFactors(torch.zeros(1, 7), torch.zeros(10, 1), 1.0)
    updates = [LoraFactors(a1, b, 1.0), LoraFactors(a2, shared, 0.5), zero]
    sub = module_subspace(updates, (10, 7))
    assert sub.p == 3 and sub.q == 4
    for f, core in zip(updates, sub.cores, strict=True):
        assert torch.allclose(sub.expand(core), f.delta(), atol=1e-5)


def test_small_adapter_directions_are_kept() -> None:
    """Column scaling: an update 1e-6 times smaller still contributes its directions to the basis."""
    gen = torch.Generator().manual_seed(1)
    big, small = torch.randn(8, 2, generator=gen), torch.randn(8, 2, generator=gen) * 1e-6
    assert union_basis([big, small], 8).shape[1] == 4

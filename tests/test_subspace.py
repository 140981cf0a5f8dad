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
            assert torch.allclose(sub.U @ core @ sub.V.T, delta, atol=1e-5 * float(delta.abs().max()))


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
        assert torch.allclose(sub.U @ core @ sub.V.T, f.delta(), atol=1e-5)


def test_small_adapter_directions_are_kept() -> None:
    """Column scaling: an update 1e-6 times smaller still contributes its directions to the basis."""
    gen = torch.Generator().manual_seed(1)
    big, small = torch.randn(8, 2, generator=gen), torch.randn(8, 2, generator=gen) * 1e-6
    assert union_basis([big, small], 8).shape[1] == 4


def _svd_span(stacked: torch.Tensor, rtol: float) -> torch.Tensor:
    """Reference: the left singular vectors of the column-normalised stack above rtol·S₀."""
    stacked = stacked / stacked.norm(dim=0)
    U, S, _ = torch.linalg.svd(stacked, full_matrices=False)
    return U[:, : int((rtol * S[0] < S).sum())]


def test_union_basis_spans_what_a_thin_svd_spans() -> None:
    """The Gram + Cholesky-QR basis: orthonormal, same rank and span as the SVD's, also when the
    spectrum spreads to 3e-6 (its squared condition number is near float64's limit) and when there
    are more columns than dimensions."""
    gen = torch.Generator().manual_seed(2)
    Q, _ = torch.linalg.qr(torch.randn(300, 30, generator=gen, dtype=torch.float64))
    spread = Q * torch.logspace(0, -5.5, 30, dtype=torch.float64)
    spread = spread @ torch.linalg.qr(torch.randn(30, 30, generator=gen, dtype=torch.float64))[0]
    wide = torch.randn(40, 96, generator=gen, dtype=torch.float64)
    for stacked in (spread, wide):
        basis = union_basis([stacked[:, :10], stacked[:, 10:]], stacked.shape[0]).double()
        reference = _svd_span(stacked, 1e-6)
        assert basis.shape == reference.shape
        torch.testing.assert_close(basis.T @ basis, torch.eye(basis.shape[1], dtype=torch.float64), atol=1e-6, rtol=0)
        assert (basis @ basis.T - reference @ reference.T).norm() < 1e-5


def test_union_basis_rank_threshold() -> None:
    """Directions with singular value 1e-5 of the largest are kept; those at 1e-8 are not."""
    gen = torch.Generator().manual_seed(3)
    Q, _ = torch.linalg.qr(torch.randn(50, 3, generator=gen, dtype=torch.float64))
    mixed = Q * torch.tensor([1.0, 1e-5, 1e-8], dtype=torch.float64)
    mixed = mixed @ torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=torch.float64))[0]
    assert union_basis([mixed], 50).shape[1] == 2

"""The shared low-rank subspace of several LoRA updates of one module (DESIGN §2).

Every ΔW_k = s_k B_k A_k lies in col(B_k) × row(A_k). U spans the union of the column spaces, V the
union of the row spaces, so ΔW_k = U C_k Vᵀ exactly with the small core C_k = s_k (Uᵀ B_k)(A_k V).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from sst_merge.lora import LoraFactors

# Singular values of the stacked (column-normalised) factors below this fraction of the largest are
# treated as zero: the union's numerical rank.
UNION_RANK_RTOL = 1e-6
# Which orthonormal basis of the union `union_basis` returns. Fisher factors are expressed in it, so
# cached factors of another basis must not be reused: this goes into their cache key.
BASIS_KIND = "gram-eigh-cholqr/1"


@dataclass(frozen=True)
class ModuleSubspace:
    """Orthonormal bases U (d_out, p), V (d_in, q) and one core (p, q) per update, float32.

    cores[k] is None where update k does not touch the module (its ΔW is zero).
    """

    U: torch.Tensor
    V: torch.Tensor
    cores: list[torch.Tensor | None]

    @property
    def p(self) -> int:
        return int(self.U.shape[1])

    @property
    def q(self) -> int:
        return int(self.V.shape[1])


def union_basis(mats: Sequence[torch.Tensor], dim: int, rtol: float = UNION_RANK_RTOL) -> torch.Tensor:
    """Orthonormal basis (dim, n) of the span of the columns of all `mats` (each (dim, r_k)).

    Each column is scaled to unit norm first, so an adapter with small weights still contributes its
    directions. Rank and directions come from the small Gram matrix (n, n) in float64: singular
    values S = √eigenvalues of the column-normalised Gram, kept where S > rtol·S₀ (rtol² = 1e-12
    is far above float64's 1e-16, so the squared spectrum still decides the rank). The kept
    directions X E / S are orthonormal up to ε·(S₀/S)², which one Cholesky-QR pass removes. Only
    tall (dim, n) products touch the big matrix, because an SVD of it would be most of the subspace's
    time on 7B-shaped modules.
    """
    cols = [m for m in mats if m.numel()]
    if not cols:
        return torch.zeros(dim, 0)
    stacked = torch.cat(cols, dim=1).double()
    gram = stacked.T @ stacked
    norms = gram.diagonal().sqrt()
    live = (norms > 0).nonzero().squeeze(1)
    if live.numel() == 0:
        return torch.zeros(dim, 0)
    scale = 1.0 / norms[live]
    eigenvalues, vectors = torch.linalg.eigh(gram[live][:, live] * scale[:, None] * scale[None, :])
    singular = eigenvalues.flip(0).clamp(min=0).sqrt()
    rank = int((rtol * singular[0] < singular).sum())
    mixing = torch.zeros(stacked.shape[1], rank, dtype=torch.float64)
    mixing[live] = scale[:, None] * vectors.flip(1)[:, :rank] / singular[:rank]
    basis = stacked @ mixing
    upper = torch.linalg.cholesky(basis.T @ basis, upper=True)
    return torch.linalg.solve_triangular(upper, basis, upper=True, left=False).float().contiguous()


def module_subspace(
    updates: Sequence[LoraFactors | None], shape: tuple[int, int], rtol: float = UNION_RANK_RTOL
) -> ModuleSubspace:
    """Union bases of the updates of one module of shape (d_out, d_in) and each update's core."""
    present = [f for f in updates if f is not None]
    U = union_basis([f.B for f in present], shape[0], rtol)
    V = union_basis([f.A.T for f in present], shape[1], rtol)
    if not present:
        return ModuleSubspace(U=U, V=V, cores=[None] * len(updates))
    # Every update's projections in two products (Uᵀ[B_1 … B_K] and [A_1; …; A_K] V), not 2K small ones.
    ranks = [f.rank for f in present]
    left = (U.double().T @ torch.cat([f.B.double() for f in present], dim=1)).split(ranks, dim=1)
    right = (torch.cat([f.A.double() for f in present], dim=0) @ V.double()).split(ranks, dim=0)
    cores = iter([(f.scale * (lb @ ra)).float() for f, lb, ra in zip(present, left, right, strict=True)])
    return ModuleSubspace(U=U, V=V, cores=[None if f is None else next(cores) for f in updates])

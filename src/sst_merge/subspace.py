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
RANK_RTOL = 1e-6


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

    def expand(self, core: torch.Tensor) -> torch.Tensor:
        """Dense U core Vᵀ (d_out, d_in) of a (p, q) core."""
        return self.U @ core @ self.V.T


def union_basis(mats: Sequence[torch.Tensor], dim: int, rtol: float = RANK_RTOL) -> torch.Tensor:
    """Orthonormal basis (dim, n) of the span of the columns of all `mats` (each (dim, r_k)).

    Each column is scaled to unit norm first, so an adapter with small weights still contributes its
    directions; the rank is decided by an SVD in float64 with relative tolerance `rtol`.
    """
    cols = [m.double() for m in mats if m.numel()]
    if not cols:
        return torch.zeros(dim, 0)
    stacked = torch.cat(cols, dim=1)
    norms = stacked.norm(dim=0)
    stacked = stacked[:, norms > 0] / norms[norms > 0]
    if stacked.shape[1] == 0:
        return torch.zeros(dim, 0)
    U, S, _ = torch.linalg.svd(stacked, full_matrices=False)
    rank = int((rtol * S[0] < S).sum())
    return U[:, :rank].float().contiguous()


def module_subspace(
    updates: Sequence[LoraFactors | None], shape: tuple[int, int], rtol: float = RANK_RTOL
) -> ModuleSubspace:
    """Union bases of the updates of one module of shape (d_out, d_in) and each update's core."""
    present = [f for f in updates if f is not None]
    U = union_basis([f.B for f in present], shape[0], rtol)
    V = union_basis([f.A.T for f in present], shape[1], rtol)
    U64, V64 = U.double(), V.double()
    cores = [None if f is None else (f.scale * (U64.T @ f.B.double()) @ (f.A.double() @ V64)).float() for f in updates]
    return ModuleSubspace(U=U, V=V, cores=cores)

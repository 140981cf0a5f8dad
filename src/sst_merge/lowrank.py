"""Singular value decompositions of merged updates, and rank-r' LoRA factors cut from them."""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Singular values below this fraction of the largest count as zero when finding the exact rank.
EXACT_RANK_RTOL = 1e-6


@dataclass(frozen=True)
class SVDFactors:
    """ΔW = U diag(S) Vh with U (d_out, n), S (n,) descending, Vh (n, d_in), float32."""

    U: torch.Tensor
    S: torch.Tensor
    Vh: torch.Tensor

    def exact_rank(self) -> int:
        """Number of singular values above EXACT_RANK_RTOL of the largest."""
        s = self.S
        return int((s > EXACT_RANK_RTOL * s[0]).sum()) if s.numel() and s[0] > 0 else 0

    def rel_error(self, rank: int) -> float:
        """‖ΔW − ΔW_rank‖_F / ‖ΔW‖_F of the best rank-`rank` approximation (0 for ΔW = 0)."""
        energy = self.S.double() ** 2
        total = float(energy.sum())
        return (float(energy[rank:].sum()) / total) ** 0.5 if total > 0 else 0.0

    def factors(self, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        """LoRA factors (B (d_out, rank), A (rank, d_in)) of the best rank-`rank` approximation.

        The singular values are split evenly (√S on each side); missing directions are zero padding,
        so every module can share one rank.
        """
        kept = min(rank, self.S.numel())
        root = self.S[:kept].sqrt()
        B = torch.zeros(self.U.shape[0], rank)
        A = torch.zeros(rank, self.Vh.shape[1])
        B[:, :kept] = self.U[:, :kept] * root
        A[:kept] = root[:, None] * self.Vh[:kept]
        return B, A


def svd_of_factored(B: torch.Tensor, A: torch.Tensor) -> SVDFactors:
    """SVD of ΔW = B @ A (B (d_out, R), A (R, d_in)) without forming ΔW.

    QR of B and of Aᵀ reduce ΔW to an R×R core whose SVD gives ΔW's exact singular triplets;
    done in float64 so that tiny singular values of stacked factors stay accurate.
    """
    QB, RB = torch.linalg.qr(B.double())
    QA, RA = torch.linalg.qr(A.T.double())
    U, S, Vh = torch.linalg.svd(RB @ RA.T)
    return SVDFactors(U=(QB @ U).float(), S=S.float(), Vh=(Vh @ QA.T).float())


def svd_of_orthonormal(U: torch.Tensor, core: torch.Tensor, V: torch.Tensor) -> SVDFactors:
    """SVD of ΔW = U core Vᵀ whose U (d_out, p) and V (d_in, q) have orthonormal columns: the core's
    SVD (float64) rotated into the bases; no QR needed."""
    Uc, S, Vh = torch.linalg.svd(core.double())
    return SVDFactors(U=(U.double() @ Uc).float(), S=S.float(), Vh=(Vh @ V.T.double()).float())


def svd_of_dense(delta: torch.Tensor, device: torch.device | None = None) -> SVDFactors:
    """Thin SVD of the dense ΔW (d_out, d_in), computed on `device` when given (factors on the CPU)."""
    U, S, Vh = torch.linalg.svd(delta.float().to(device), full_matrices=False)
    return SVDFactors(U=U.cpu(), S=S.cpu(), Vh=Vh.cpu())

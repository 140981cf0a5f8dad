"""The generalized eigenproblem between a safety and a utility Fisher, and the filters built on it (DESIGN §4–§5).

Both Fishers are Kronecker-factored on the (p, q) core of a module: F = Ā ⊗ Ḡ with Ā (q, q) the
input factor and Ḡ (p, p) the output-gradient factor, acting on vec(δ) (column-major), so that
vec(δ)ᵀ F vec(δ) = tr(δᵀ Ḡ δ Ā). The problem F_s v = λ F_u v separates into two small damped
symmetric-definite problems whose eigenvalues multiply: λ_ij = ν_j μ_i, v_ij = vec(g_j a_iᵀ).
All functions are pure and work in float64.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import torch

# A factor whose mean eigenvalue is below this is treated as zero (no information at all).
TINY = 1e-30


class DegenerateSpectrumWarning(UserWarning):
    """A module's Fisher factors carry (almost) no information; the filter falls back to a safe default."""


@dataclass(frozen=True)
class KroneckerEigen:
    """Eigenbasis of F_s v = λ F_u v for one module, F_u damped.

    G (p, p) and A (q, q) hold the eigenvectors column-wise, normalised so that Gᵀ M_G G = I and
    Aᵀ M_A A = I; nu (p,) and mu (q,) are the factor eigenvalues (≥ 0); M_G, M_A the damped utility
    factors. A core δ (p, q) has coefficients c = Gᵀ M_G δ M_A A and δ = G c Aᵀ.
    """

    G: torch.Tensor
    A: torch.Tensor
    nu: torch.Tensor
    mu: torch.Tensor
    M_G: torch.Tensor
    M_A: torch.Tensor

    @property
    def lam(self) -> torch.Tensor:
        """λ (p, q): λ[j, i] = ν_j μ_i, the eigenvalue of the direction vec(g_j a_iᵀ)."""
        return torch.outer(self.nu, self.mu)

    def coefficients(self, delta: torch.Tensor) -> torch.Tensor:
        """Eigen-coefficients c (p, q) of the core δ (p, q)."""
        return self.G.T @ self.M_G @ delta.double() @ self.M_A @ self.A

    def reconstruct(self, c: torch.Tensor) -> torch.Tensor:
        """The core δ = G c Aᵀ (p, q) of coefficients c (p, q)."""
        return self.G @ c.double() @ self.A.T


def damping(M: torch.Tensor, gamma: float, fallback: torch.Tensor | None = None) -> tuple[float, bool]:
    """ε = γ · tr(M)/n, the damping added to the (n, n) PSD factor M; and whether M was degenerate.

    A factor with (near) zero trace carries no information: ε is then taken relative to `fallback`
    (the other Fisher's factor, so the scales stay comparable), else 1. Never zero, never NaN.
    """
    n = M.shape[0]
    mean = float(torch.trace(M.double())) / n if n else 0.0
    if math.isfinite(mean) and mean > TINY:
        return gamma * mean, False
    other = float(torch.trace(fallback.double())) / n if fallback is not None and n else 0.0
    return (gamma * other if math.isfinite(other) and other > TINY else 1.0), True


def generalized_eigh(S: torch.Tensor, M: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve S x = w M x for symmetric S (n, n) and symmetric positive definite M (n, n).

    Returns w (n,) ascending, clamped at 0 (S is PSD; rounding can make tiny negatives), and X (n, n)
    with Xᵀ M X = I, through the Cholesky factor M = L Lᵀ and the standard problem L⁻¹ S L⁻ᵀ.
    """
    S, M = S.double(), M.double()
    S = (S + S.T) / 2
    L = torch.linalg.cholesky((M + M.T) / 2)
    C = torch.linalg.solve_triangular(L, torch.linalg.solve_triangular(L, S, upper=False).T, upper=False)
    w, Y = torch.linalg.eigh((C + C.T) / 2)
    X = torch.linalg.solve_triangular(L.T, Y, upper=True)
    return w.clamp_min(0.0), X


def kronecker_gevp(
    A_s: torch.Tensor,
    G_s: torch.Tensor,
    A_u: torch.Tensor | None,
    G_u: torch.Tensor | None,
    gamma: float,
    module: str = "",
) -> KroneckerEigen:
    """Eigenbasis of (Ā_s ⊗ Ḡ_s) v = λ (M_A ⊗ M_G) v with M = factor + ε I (see `damping`).

    A_s, A_u: (q, q) input factors; G_s, G_u: (p, p) gradient factors. A_u = G_u = None gives the
    standard eigenproblem of the safety Fisher alone (M = I), as AGL uses. Warns with
    DegenerateSpectrumWarning, naming `module`, when a utility factor is (near) zero or the safety
    Fisher vanishes.
    """
    for what, factor in (("safety", A_s), ("safety", G_s), ("utility", A_u), ("utility", G_u)):
        if factor is not None and not torch.isfinite(factor).all():
            raise ValueError(f"module {module}: the {what} Fisher factor has NaN or Inf values")
    if A_u is None or G_u is None:
        M_A, M_G = torch.eye(A_s.shape[0], dtype=torch.float64), torch.eye(G_s.shape[0], dtype=torch.float64)
    else:
        eps_A, bad_A = damping(A_u, gamma, A_s)
        eps_G, bad_G = damping(G_u, gamma, G_s)
        if bad_A or bad_G:
            warnings.warn(
                f"module {module}: the utility Fisher is (near) zero here; damping relative to the safety Fisher",
                DegenerateSpectrumWarning,
                stacklevel=2,
            )
        M_A = A_u.double() + eps_A * torch.eye(A_u.shape[0], dtype=torch.float64)
        M_G = G_u.double() + eps_G * torch.eye(G_u.shape[0], dtype=torch.float64)
    mu, A = generalized_eigh(A_s, M_A)
    nu, G = generalized_eigh(G_s, M_G)
    if mu.numel() and nu.numel() and float(mu.max()) * float(nu.max()) <= TINY:
        warnings.warn(
            f"module {module}: the safety Fisher is (near) zero here; the filter leaves this module unchanged",
            DegenerateSpectrumWarning,
            stacklevel=2,
        )
    return KroneckerEigen(G=G, A=A, nu=nu, mu=mu, M_G=M_G, M_A=M_A)


def soft_filter(lam: torch.Tensor, beta: float) -> torch.Tensor:
    """1/(1+βλ) elementwise: the closed form of argmin ½‖δ'−δ‖²_{F_u} + ½β‖δ'‖²_{F_s} per eigendirection."""
    return 1.0 / (1.0 + beta * lam)


def injection_filter(lam: torch.Tensor, beta: float) -> torch.Tensor:
    """βλ/(1+βλ) elementwise: the share of the safety update added back along each eigendirection."""
    return beta * lam / (1.0 + beta * lam)


def hard_keep_mask(lam: torch.Tensor, rho: float) -> torch.Tensor:
    """1.0 where λ is outside the top-`rho` fraction of all entries of λ, 0.0 on that top fraction."""
    keep = torch.ones_like(lam, dtype=torch.float64)
    k = int(round(rho * lam.numel()))
    if k > 0:
        keep.view(-1)[torch.topk(lam.reshape(-1), k).indices] = 0.0
    return keep


def safety_energy(lam: torch.Tensor, c: torch.Tensor, beta: float = 0.0) -> float:
    """vec(δ')ᵀ F_s vec(δ') = Σ λ c²/(1+βλ)² of the soft-filtered core with coefficients c."""
    return float((lam * (c.double() * soft_filter(lam, beta)) ** 2).sum())


def calibrate_beta(spectra: Iterable[tuple[torch.Tensor, torch.Tensor]], share: float) -> float:
    """The β at which the soft filter removes `share` of the safety-Fisher energy of the update.

    `spectra` holds (λ, c) of every module; the energy Σ_m Σ λ c²/(1+βλ)² falls monotonically
    from its β = 0 value to 0, so bisection in log β finds the β where it is (1 − share) of the
    start. Returns 0.0 when there is no safety energy to remove (or share ≤ 0).
    """
    spectra = [(lam, c) for lam, c in spectra]
    total = sum(safety_energy(lam, c) for lam, c in spectra)
    if share <= 0 or total <= TINY:
        return 0.0
    target = (1.0 - share) * total

    def energy(beta: float) -> float:
        return sum(safety_energy(lam, c, beta) for lam, c in spectra)

    lo, hi = 1.0, 1.0
    while energy(lo) < target and lo > 1e-300:
        lo /= 16.0
    while energy(hi) > target and hi < 1e300:
        hi *= 16.0
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        if energy(mid) > target:
            lo = mid
        else:
            hi = mid
        if hi / lo < 1 + 1e-10:
            break
    return math.sqrt(lo * hi)

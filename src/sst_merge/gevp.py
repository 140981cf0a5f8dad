"""The generalized eigenproblem between a safety and a utility Fisher, and the filters built on it (DESIGN §4–§5).

Both Fishers are Kronecker-factored on the (p, q) core of a module: F = Ā ⊗ Ḡ with Ā (q, q) the
input factor and Ḡ (p, p) the output-gradient factor, acting on vec(δ) (column-major), so that
vec(δ)ᵀ F vec(δ) = tr(δᵀ Ḡ δ Ā). The problem F_s v = λ F_u v separates into two small damped
symmetric-definite problems whose eigenvalues multiply: λ_ij = ν_j μ_i, v_ij = vec(g_j a_iᵀ).
A diagonal Fisher (the ablation) has the coordinate directions as its eigenbasis (`DiagonalEigen`).
Several tasks' utility Fishers pool into one Kronecker product (`nearest_kronecker`). All functions
are pure and work in float64.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

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

    def natural_coefficients(self, g: torch.Tensor) -> torch.Tensor:
        """Coefficients (p, q) of F_u⁻¹ g for a gradient g (p, q): Gᵀ g A, since F_u⁻¹ = X Xᵀ for the
        eigenvector matrix X (Xᵀ F_u X = I)."""
        return self.G.T @ g.double() @ self.A


@dataclass(frozen=True)
class DiagonalEigen:
    """Eigenbasis of F_s v = λ F_u v for diagonal Fishers of the (p, q) core: F_s = diag(D_s), F_u =
    diag(m) with m = D_u + ε the damped utility diagonal, both (p, q). The eigenvectors are the
    coordinate directions scaled to unit F_u-norm, e_ij/√m_ij, so λ = D_s/m, a core δ has coefficients
    √m ∘ δ, and λc² = D_s δ² is its safety energy, as in the Kronecker case. Everything is O(pq).
    """

    D_s: torch.Tensor
    m: torch.Tensor

    @property
    def lam(self) -> torch.Tensor:
        """λ (p, q) = D_s / m."""
        return self.D_s / self.m

    def coefficients(self, delta: torch.Tensor) -> torch.Tensor:
        """Eigen-coefficients √m ∘ δ (p, q) of the core δ (p, q)."""
        return self.m.sqrt() * delta.double()

    def reconstruct(self, c: torch.Tensor) -> torch.Tensor:
        """The core c / √m (p, q) of coefficients c (p, q)."""
        return c.double() / self.m.sqrt()

    def natural_coefficients(self, g: torch.Tensor) -> torch.Tensor:
        """Coefficients (p, q) of F_u⁻¹ g = g / m: g / √m."""
        return g.double() / self.m.sqrt()


class Eigenbasis(Protocol):
    """What the filters need of an eigenbasis: λ (p, q), coefficients of a core and of F_u⁻¹·gradient,
    and the core of coefficients. KroneckerEigen and DiagonalEigen are the two."""

    @property
    def lam(self) -> torch.Tensor: ...

    def coefficients(self, delta: torch.Tensor) -> torch.Tensor: ...

    def reconstruct(self, c: torch.Tensor) -> torch.Tensor: ...

    def natural_coefficients(self, g: torch.Tensor) -> torch.Tensor: ...


def damping(diagonal: torch.Tensor, gamma: float, fallback: torch.Tensor | None = None) -> tuple[float, bool]:
    """ε = γ · mean(diagonal), the damping added to a PSD factor whose diagonal entries are `diagonal`
    (n,) (its mean eigenvalue is tr/n); and whether the factor was degenerate.

    A factor with (near) zero trace carries no information: ε is then taken relative to `fallback`
    (the other Fisher's diagonal, so the scales stay comparable), else 1. Never zero, never NaN.
    """
    n = diagonal.numel()
    mean = float(diagonal.double().sum()) / n if n else 0.0
    if math.isfinite(mean) and mean > TINY:
        return gamma * mean, False
    other = float(fallback.double().sum()) / n if fallback is not None and n else 0.0
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
        eps_A, bad_A = damping(A_u.diagonal(), gamma, A_s.diagonal())
        eps_G, bad_G = damping(G_u.diagonal(), gamma, G_s.diagonal())
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


def diagonal_gevp(D_s: torch.Tensor, D_u: torch.Tensor, gamma: float, module: str = "") -> DiagonalEigen:
    """Eigenbasis of diagonal Fishers D_s, D_u (p, q), D_u damped by ε = γ·mean(D_u) (see `damping`).

    O(pq) memory: the (pq)×(pq) matrices are never formed. Warns like `kronecker_gevp` when a Fisher
    is (near) zero.
    """
    if not (torch.isfinite(D_s).all() and torch.isfinite(D_u).all()):
        raise ValueError(f"module {module}: a diagonal Fisher has NaN or Inf values")
    eps, bad = damping(D_u.reshape(-1), gamma, D_s.reshape(-1))
    if bad:
        warnings.warn(f"module {module}: the utility Fisher is (near) zero here; damping relative to the safety "
                      "Fisher", DegenerateSpectrumWarning, stacklevel=2)
    if D_s.numel() and float(D_s.max()) <= TINY:
        warnings.warn(f"module {module}: the safety Fisher is (near) zero here; the filter leaves this module "
                      "unchanged", DegenerateSpectrumWarning, stacklevel=2)
    return DiagonalEigen(D_s=D_s.double().clamp_min(0.0), m=D_u.double() + eps)


def pooling_weights(weights: Sequence[float]) -> torch.Tensor:
    """π_k = |w_k| / Σ|w| (K,) float64: how much task k's Fisher counts in the pooled utility Fisher
    (uniform when every weight is zero)."""
    w = torch.tensor([abs(x) for x in weights], dtype=torch.float64)
    return w / w.sum() if float(w.sum()) > 0 else torch.full_like(w, 1.0 / max(len(weights), 1))


def nearest_kronecker(
    As: Sequence[torch.Tensor], Gs: Sequence[torch.Tensor], pi: torch.Tensor, tol: float = 1e-13,
    max_iterations: int = 1000,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Kronecker product A ⊗ G nearest in Frobenius norm to F = Σ_k π_k A_k ⊗ G_k (Van Loan–Pitsianis).

    As[k] (q, q), Gs[k] (p, p), π (K,) ≥ 0. The rearrangement R(F) = Σ_k π_k vec(A_k) vec(G_k)ᵀ (q², p²)
    maps Kronecker products to rank-one matrices, so the answer is its top singular pair σ u vᵀ.
    Both singular vectors lie in the span of the factors, u = Σ α_k vec(A_k), v = Σ γ_k vec(G_k), and
    the power iteration R v, Rᵀ u runs on the coefficients α, γ (K,) through the Gram matrices
    S_A = [⟨A_i, A_j⟩_F], S_G (K, K): O(K²(p² + q²)) time and nothing larger than one factor in
    memory; never the (pq)² matrix. The Grams are entrywise ≥ 0 for PSD factors, so α, γ ≥ 0
    (Perron) and A, G are PSD. Returns (√σ Σ α_k A_k, √σ Σ γ_k G_k); the split of σ between the two
    does not change the GEVP (the damping is relative to each factor's trace).
    """
    A_stack = torch.stack([a.double() for a in As])
    G_stack = torch.stack([g.double() for g in Gs])
    S_A = torch.einsum("iab,jab->ij", A_stack, A_stack)
    S_G = torch.einsum("iab,jab->ij", G_stack, G_stack)
    pi = pi.double()
    gamma = pi.clone()
    sigma = 0.0
    for _ in range(max_iterations):
        alpha = pi * (S_G @ gamma)                    # u ∝ R v
        norm_u = float(alpha @ S_A @ alpha) ** 0.5
        if norm_u <= TINY:
            return torch.zeros_like(A_stack[0]), torch.zeros_like(G_stack[0])
        alpha = alpha / norm_u
        update = pi * (S_A @ alpha)                   # v ∝ Rᵀ u; σ = ‖Rᵀ u‖
        sigma = float(update @ S_G @ update) ** 0.5
        update = update / sigma
        converged = float((update - gamma).abs().max()) <= tol * float(update.abs().max())
        gamma = update
        if converged:
            break
    alpha = pi * (S_G @ gamma)
    alpha = alpha / float(alpha @ S_A @ alpha) ** 0.5
    root = sigma**0.5
    return root * torch.einsum("k,kab->ab", alpha, A_stack), root * torch.einsum("k,kab->ab", gamma, G_stack)


def soft_filter(lam: torch.Tensor, beta: float) -> torch.Tensor:
    """1/(1+βλ) elementwise: the closed form of argmin ½‖δ'−δ‖²_{F_u} + ½β‖δ'‖²_{F_s} per eigendirection."""
    return 1.0 / (1.0 + beta * lam)


def injection_filter(lam: torch.Tensor, beta: float) -> torch.Tensor:
    """βλ/(1+βλ) elementwise: the share of the safety update added back along each eigendirection."""
    return beta * lam / (1.0 + beta * lam)


def first_order_filter(
    c_u: torch.Tensor, c_anchor: torch.Tensor, g_nat: torch.Tensor, lam: torch.Tensor, beta: float
) -> torch.Tensor:
    """Coefficients (p, q) of argmin_δ' ½‖δ'−δ_u‖²_{F_u} + β[gᵀ(δ'−a) + ½‖δ'−a‖²_{F_s}].

    The safety loss's quadratic model around the point a where its gradient g and Fisher F_s were
    taken. Setting the gradient to zero, (F_u + βF_s)δ' = F_u δ_u − βg + βF_s a; in the eigenbasis
    (Xᵀ F_u X = I, Xᵀ F_s X = Λ) this is elementwise: c' = c_a + (c_u − c_a − βĝ)/(1+βλ), with c_u, c_a
    the coefficients of δ_u and a, ĝ = `natural_coefficients(g)`. At a = δ_u it is
    δ_u − β(F_u+βF_s)⁻¹g; when g = F_s a (a quadratic safety loss minimal at the base) it is the soft
    filter c_u/(1+βλ) for any a.
    """
    return c_anchor.double() + (c_u.double() - c_anchor.double() - beta * g_nat.double()) / (1.0 + beta * lam)


def first_order_rank_one(
    c_u: Sequence[torch.Tensor], c_anchor: Sequence[torch.Tensor], g_nat: Sequence[torch.Tensor],
    lam: Sequence[torch.Tensor], beta: float,
) -> list[torch.Tensor]:
    """`first_order_filter` of all modules at once with the safety curvature F_s + g gᵀ instead of F_s.

    Lists over modules, each entry (p_m, q_m); g is the gradient of the whole model, so g gᵀ couples the
    modules. Why: the exact empirical Fisher F = E[g_t g_tᵀ] satisfies F ⪰ ḡḡᵀ (their difference is the
    gradients' covariance), so its Newton step predicts at most ½ nats of decrease (ḡᵀF⁻¹ḡ ≤ 1); K-FAC's
    Ā ⊗ Ḡ loses that bound and can be far too flat along ḡ. Adding ḡḡᵀ back restores it. In the
    eigenbasis the system is (D + β ĝĝᵀ) c' = r with D = I + βΛ and r = c_u + βΛc_a − β(1 − ĝ·c_a) ĝ, and
    Sherman–Morrison gives c' = D⁻¹r − β (ĝ·D⁻¹r)/(1 + β ĝ·D⁻¹ĝ) D⁻¹ĝ: O(Σ pq), with the two dot
    products summed over all modules.
    """
    c_u = [c.double() for c in c_u]
    c_anchor = [c.double() for c in c_anchor]
    g_nat = [g.double() for g in g_nat]
    inverse = [1.0 / (1.0 + beta * la) for la in lam]
    g_dot_a = sum(float((g * a).sum()) for g, a in zip(g_nat, c_anchor, strict=True))
    D_r = [(u + beta * la * a - beta * (1.0 - g_dot_a) * g) * d
           for u, a, g, la, d in zip(c_u, c_anchor, g_nat, lam, inverse, strict=True)]
    D_g = [g * d for g, d in zip(g_nat, inverse, strict=True)]
    g_D_r = sum(float((g * x).sum()) for g, x in zip(g_nat, D_r, strict=True))
    g_D_g = sum(float((g * x).sum()) for g, x in zip(g_nat, D_g, strict=True))
    factor = beta * g_D_r / (1.0 + beta * g_D_g)
    return [x - factor * y for x, y in zip(D_r, D_g, strict=True)]


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
    """The β at which the soft filter removes `share` of the safety-Fisher energy of the update
    (`beta_for_safety_energy` of (1 − share) × its energy at β = 0). Returns 0.0 when there is no
    safety energy to remove (or share ≤ 0)."""
    spectra = [(lam, c) for lam, c in spectra]
    total = sum(safety_energy(lam, c) for lam, c in spectra)
    if share <= 0 or total <= TINY:
        return 0.0
    return beta_for_safety_energy(spectra, (1.0 - share) * total)


def beta_for_safety_energy(spectra: Iterable[tuple[torch.Tensor, torch.Tensor]], target: float) -> float:
    """The β at which the soft-filtered update keeps `target` of safety-Fisher energy Σ λc²/(1+βλ)²
    over (λ, c) of every module. The energy falls monotonically from its β = 0 value to 0, so bisection
    in log β finds it. Returns 0.0 when the update has no more than `target` to begin with."""
    spectra = [(lam, c) for lam, c in spectra]

    def energy(beta: float) -> float:
        return sum(safety_energy(lam, c, beta) for lam, c in spectra)

    if energy(0.0) <= max(target, TINY):
        return 0.0
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


def utility_energy_lost(coefficients: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> float | None:
    """Share of the update's utility-Fisher energy that a filter moves it by: Σ(c − c')² / Σc² over
    (c, c') of every module. In the eigenbasis XᵀF_uX = I the coefficients' squares are F_u's energy,
    so this is ‖δ'−δ_u‖²_{F_u} / ‖δ_u‖²_{F_u}: what the utility term of the objective says the filter
    costs. None without utility energy."""
    moved = total = 0.0
    for c, filtered in coefficients:
        total += float((c.double() ** 2).sum())
        moved += float(((c.double() - filtered.double()) ** 2).sum())
    return moved / total if total > TINY else None


# Decades of λ over which `energy_spectrum` bins the energies (λ below the first / above the last edge
# fall into the first / last bin).
SPECTRUM_EDGES = tuple(10.0**k for k in range(-3, 4))


def energy_spectrum(spectra: Iterable[tuple[torch.Tensor, torch.Tensor]],
                    edges: Sequence[float] = SPECTRUM_EDGES) -> list[dict[str, float]]:
    """Where an update's energy sits along λ = (safety curvature)/(utility curvature): for each bin of λ
    (below edges[0], between consecutive edges, above edges[-1]) the share of its utility energy Σc² and
    of its safety energy Σλc², over (λ, c) of every module. A filter can remove safety energy cheaply
    only where the safety share sits at larger λ than the utility share; where both sit in the same
    bins, keeping safety costs utility whatever β is."""
    bounds = torch.tensor([0.0, *edges, math.inf], dtype=torch.float64)
    utility = torch.zeros(len(bounds) - 1, dtype=torch.float64)
    safety = torch.zeros_like(utility)
    for lam, c in spectra:
        lam, c2 = lam.double().flatten(), c.double().flatten() ** 2
        index = torch.bucketize(lam, bounds[1:-1], right=True)  # 0 … len(edges): one bin each
        utility.index_add_(0, index, c2)
        safety.index_add_(0, index, lam * c2)
    u_total, s_total = float(utility.sum()), float(safety.sum())
    return [{"lambda_from": float(bounds[i]), "lambda_to": float(bounds[i + 1]),
             "utility_share": float(utility[i]) / u_total if u_total > TINY else 0.0,
             "safety_share": float(safety[i]) / s_total if s_total > TINY else 0.0}
            for i in range(len(utility))]

"""The Kronecker GEVP and the filters against dense (pq)×(pq) computations with scipy/numpy."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.linalg
import torch

from sst_merge.gevp import (
    DegenerateSpectrumWarning,
    calibrate_beta,
    hard_keep_mask,
    injection_filter,
    kronecker_gevp,
    safety_energy,
    soft_filter,
)


def random_spd(n: int, seed: int, rank: int | None = None) -> torch.Tensor:
    """A random symmetric PSD (n, n) float64 matrix (full rank unless `rank`)."""
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, rank or n + 3, generator=gen, dtype=torch.float64)
    return X @ X.T / X.shape[1]


def vec(M: torch.Tensor) -> np.ndarray:
    """Column-major vectorisation, the convention under which vec(G C Aᵀ) = (A ⊗ G) vec(C)."""
    return M.numpy().reshape(-1, order="F")


def unvec(v: np.ndarray, p: int, q: int) -> torch.Tensor:
    return torch.from_numpy(v.reshape(p, q, order="F").copy())


P, Q, GAMMA = 4, 3, 0.05


@pytest.fixture()
def factors() -> dict[str, torch.Tensor]:
    return {"A_s": random_spd(Q, 1), "G_s": random_spd(P, 2), "A_u": random_spd(Q, 3), "G_u": random_spd(P, 4)}


def dense_fishers(f: dict[str, torch.Tensor], eig) -> tuple[np.ndarray, np.ndarray]:
    """F_s = Ā_s ⊗ Ḡ_s and the damped F_u = M_A ⊗ M_G as dense (pq, pq) arrays."""
    return np.kron(f["A_s"].numpy(), f["G_s"].numpy()), np.kron(eig.M_A.numpy(), eig.M_G.numpy())


def test_damping_is_relative_to_trace(factors: dict[str, torch.Tensor]) -> None:
    eig = kronecker_gevp(factors["A_s"], factors["G_s"], factors["A_u"], factors["G_u"], GAMMA)
    eps_A = GAMMA * float(torch.trace(factors["A_u"])) / Q
    assert torch.allclose(eig.M_A, factors["A_u"] + eps_A * torch.eye(Q, dtype=torch.float64))


def test_kronecker_eigenvalues_match_dense_scipy(factors: dict[str, torch.Tensor]) -> None:
    eig = kronecker_gevp(factors["A_s"], factors["G_s"], factors["A_u"], factors["G_u"], GAMMA)
    F_s, F_u = dense_fishers(factors, eig)
    dense = scipy.linalg.eigh(F_s, F_u, eigvals_only=True)
    ours = np.sort(vec(eig.lam))
    np.testing.assert_allclose(ours, np.sort(dense), rtol=1e-8, atol=1e-10)
    # and each v_ij = vec(g_j a_iᵀ) is an eigenvector: F_s v = λ F_u v
    for j in range(P):
        for i in range(Q):
            v = vec(torch.outer(eig.G[:, j], eig.A[:, i]))
            np.testing.assert_allclose(F_s @ v, float(eig.lam[j, i]) * (F_u @ v), atol=1e-9)


def test_coefficients_roundtrip(factors: dict[str, torch.Tensor]) -> None:
    eig = kronecker_gevp(factors["A_s"], factors["G_s"], factors["A_u"], factors["G_u"], GAMMA)
    delta = torch.randn(P, Q, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    assert torch.allclose(eig.reconstruct(eig.coefficients(delta)), delta, atol=1e-12)


@pytest.mark.parametrize("beta", [0.0, 0.3, 5.0, 1e4])
def test_soft_filter_equals_dense_closed_form(factors: dict[str, torch.Tensor], beta: float) -> None:
    """G (c/(1+βλ)) Aᵀ = (F_u + βF_s)⁻¹ F_u δ computed with dense (pq)×(pq) matrices."""
    eig = kronecker_gevp(factors["A_s"], factors["G_s"], factors["A_u"], factors["G_u"], GAMMA)
    F_s, F_u = dense_fishers(factors, eig)
    delta = torch.randn(P, Q, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    expected = unvec(np.linalg.solve(F_u + beta * F_s, F_u @ vec(delta)), P, Q)
    ours = eig.reconstruct(eig.coefficients(delta) * soft_filter(eig.lam, beta))
    assert torch.allclose(ours, expected, rtol=1e-8, atol=1e-10)
    # the injection filter is the complement: soft + injection = identity
    injected = eig.reconstruct(eig.coefficients(delta) * injection_filter(eig.lam, beta))
    assert torch.allclose(ours + injected, delta, atol=1e-9)


def test_safety_energy_is_the_fisher_quadratic_form(factors: dict[str, torch.Tensor]) -> None:
    eig = kronecker_gevp(factors["A_s"], factors["G_s"], factors["A_u"], factors["G_u"], GAMMA)
    F_s, _ = dense_fishers(factors, eig)
    delta = torch.randn(P, Q, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    filtered = eig.reconstruct(eig.coefficients(delta) * soft_filter(eig.lam, 2.0))
    expected = vec(filtered) @ F_s @ vec(filtered)
    assert safety_energy(eig.lam, eig.coefficients(delta), 2.0) == pytest.approx(expected, rel=1e-9)


def test_calibrated_beta_removes_the_asked_share(factors: dict[str, torch.Tensor]) -> None:
    eig = kronecker_gevp(factors["A_s"], factors["G_s"], factors["A_u"], factors["G_u"], GAMMA)
    c = eig.coefficients(torch.randn(P, Q, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    beta = calibrate_beta([(eig.lam, c)], 0.75)
    assert safety_energy(eig.lam, c, beta) == pytest.approx(0.25 * safety_energy(eig.lam, c), rel=1e-6)
    assert calibrate_beta([(eig.lam, c)], 0.0) == 0.0


def test_hard_mask_zeroes_the_top_fraction() -> None:
    lam = torch.tensor([[5.0, 1.0, 3.0], [0.5, 4.0, 2.0]], dtype=torch.float64)
    keep = hard_keep_mask(lam, 0.5)
    assert keep.tolist() == [[0.0, 1.0, 0.0], [1.0, 0.0, 1.0]]


def test_standard_problem_without_utility(factors: dict[str, torch.Tensor]) -> None:
    """A_u = G_u = None: the plain eigenproblem of Ā_s ⊗ Ḡ_s with an orthonormal eigenbasis."""
    eig = kronecker_gevp(factors["A_s"], factors["G_s"], None, None, GAMMA)
    dense = np.linalg.eigvalsh(np.kron(factors["A_s"].numpy(), factors["G_s"].numpy()))
    np.testing.assert_allclose(np.sort(vec(eig.lam)), dense, rtol=1e-8, atol=1e-12)
    assert torch.allclose(eig.G.T @ eig.G, torch.eye(P, dtype=torch.float64), atol=1e-10)


@pytest.mark.parametrize("utility", ["zero", "rank1", "tiny"])
def test_singular_utility_factors_are_finite(factors: dict[str, torch.Tensor], utility: str) -> None:
    """Zero, rank-deficient and near-zero utility factors: finite λ, filter in [0, 1], finite output."""
    A_u = {"zero": torch.zeros(Q, Q, dtype=torch.float64), "rank1": random_spd(Q, 5, rank=1),
           "tiny": 1e-40 * random_spd(Q, 6)}[utility]
    G_u = torch.zeros(P, P, dtype=torch.float64) if utility == "zero" else random_spd(P, 7, rank=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        eig = kronecker_gevp(factors["A_s"], factors["G_s"], A_u, G_u, GAMMA, module="layers.0.q_proj")
    if utility in ("zero", "tiny"):
        assert any(issubclass(w.category, DegenerateSpectrumWarning) and "layers.0.q_proj" in str(w.message)
                   for w in caught)
    delta = torch.randn(P, Q, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for beta in (0.0, 1.0, 1e12):
        filt = soft_filter(eig.lam, beta)
        out = eig.reconstruct(eig.coefficients(delta) * filt)
        assert torch.isfinite(eig.lam).all() and torch.isfinite(out).all()
        assert (filt >= 0).all() and (filt <= 1).all()


def test_zero_safety_fisher_warns_and_keeps_update(factors: dict[str, torch.Tensor]) -> None:
    zero_A, zero_G = torch.zeros(Q, Q, dtype=torch.float64), torch.zeros(P, P, dtype=torch.float64)
    with pytest.warns(DegenerateSpectrumWarning, match="mlp.up_proj"):
        eig = kronecker_gevp(zero_A, zero_G, factors["A_u"], factors["G_u"], GAMMA, module="mlp.up_proj")
    delta = torch.randn(P, Q, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    out = eig.reconstruct(eig.coefficients(delta) * soft_filter(eig.lam, 100.0))
    assert torch.allclose(out, delta, atol=1e-10)


def test_nan_factor_is_an_error(factors: dict[str, torch.Tensor]) -> None:
    bad = factors["A_u"].clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="m.v_proj"):
        kronecker_gevp(factors["A_s"], factors["G_s"], bad, factors["G_u"], GAMMA, module="m.v_proj")

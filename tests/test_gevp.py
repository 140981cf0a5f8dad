"""The Kronecker GEVP and the filters against dense (pq)×(pq) computations with scipy/numpy."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.linalg
import torch

from sst_merge.gevp import (
    DegenerateSpectrumWarning,
    beta_for_safety_energy,
    calibrate_beta,
    diagonal_gevp,
    energy_spectrum,
    first_order_filter,
    first_order_rank_one,
    hard_keep_mask,
    injection_filter,
    kronecker_gevp,
    nearest_kronecker,
    pooling_weights,
    safety_energy,
    soft_filter,
    utility_energy_lost,
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


def test_utility_energy_lost_is_the_utility_fisher_distance(factors: dict[str, torch.Tensor]) -> None:
    """Σ(c − c')²/Σc² = ‖δ'−δ‖²_{F_u} / ‖δ‖²_{F_u} with the dense damped F_u, for the soft filter."""
    eig = kronecker_gevp(factors["A_s"], factors["G_s"], factors["A_u"], factors["G_u"], GAMMA)
    _, F_u = dense_fishers(factors, eig)
    delta = torch.randn(P, Q, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    c = eig.coefficients(delta)
    filtered = c * soft_filter(eig.lam, 3.0)
    moved = vec(delta - eig.reconstruct(filtered))
    expected = (moved @ F_u @ moved) / (vec(delta) @ F_u @ vec(delta))
    assert utility_energy_lost([(c, filtered)]) == pytest.approx(expected, rel=1e-9)
    assert utility_energy_lost([(c, c)]) == 0.0
    assert utility_energy_lost([(torch.zeros_like(c), torch.zeros_like(c))]) is None


def test_energy_spectrum_bins_utility_and_safety_energy_by_lambda() -> None:
    lam = torch.tensor([[1e-5, 0.5], [20.0, 1e6]], dtype=torch.float64)
    c = torch.tensor([[1.0, 2.0], [1.0, 1.0]], dtype=torch.float64)
    bins = energy_spectrum([(lam, c), (torch.tensor([0.01]), torch.tensor([3.0]))], edges=(0.1, 1.0, 100.0))
    assert [(b["lambda_from"], b["lambda_to"]) for b in bins] == [(0.0, 0.1), (0.1, 1.0), (1.0, 100.0),
                                                                   (100.0, float("inf"))]
    utility = [1.0 + 9.0, 4.0, 1.0, 1.0]  # c² per bin: λ 1e-5 and 0.01 | 0.5 | 20 | 1e6
    safety = [1e-5 + 0.09, 2.0, 20.0, 1e6]  # λc²
    for got, u, s in zip(bins, utility, safety, strict=True):
        assert got["utility_share"] == pytest.approx(u / sum(utility))
        assert got["safety_share"] == pytest.approx(s / sum(safety))
    # an edge belongs to the bin above it
    edge = energy_spectrum([(torch.tensor([1.0]), torch.tensor([1.0]))], edges=(0.1, 1.0, 100.0))
    assert [b["utility_share"] for b in edge] == [0.0, 0.0, 1.0, 0.0]


def test_calibrated_beta_removes_the_asked_share(factors: dict[str, torch.Tensor]) -> None:
    eig = kronecker_gevp(factors["A_s"], factors["G_s"], factors["A_u"], factors["G_u"], GAMMA)
    c = eig.coefficients(torch.randn(P, Q, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    beta = calibrate_beta([(eig.lam, c)], 0.75)
    assert safety_energy(eig.lam, c, beta) == pytest.approx(0.25 * safety_energy(eig.lam, c), rel=1e-6)
    assert calibrate_beta([(eig.lam, c)], 0.0) == 0.0


def test_beta_for_an_absolute_safety_energy(factors: dict[str, torch.Tensor]) -> None:
    eig = kronecker_gevp(factors["A_s"], factors["G_s"], factors["A_u"], factors["G_u"], GAMMA)
    c = eig.coefficients(torch.randn(P, Q, generator=torch.Generator().manual_seed(4), dtype=torch.float64))
    total = safety_energy(eig.lam, c)
    beta = beta_for_safety_energy([(eig.lam, c), (eig.lam, 2 * c)], 0.1 * total)
    assert safety_energy(eig.lam, c, beta) + safety_energy(eig.lam, 2 * c, beta) == pytest.approx(0.1 * total, rel=1e-6)
    assert beta_for_safety_energy([(eig.lam, c)], total) == 0.0  # nothing to remove
    assert calibrate_beta([(eig.lam, c)], 0.9) == pytest.approx(beta_for_safety_energy([(eig.lam, c)], 0.1 * total))


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


def tvec(M: torch.Tensor) -> torch.Tensor:
    """Column-major vec in torch: vec(G C Aᵀ) = (A ⊗ G) vec(C)."""
    return M.T.reshape(-1)


def tunvec(v: torch.Tensor, p: int, q: int) -> torch.Tensor:
    return v.reshape(q, p).T


@pytest.mark.parametrize("beta", [0.0, 0.7, 30.0])
def test_first_order_step_equals_dense_solve(factors: dict[str, torch.Tensor], beta: float) -> None:
    """δ' = δ_u − β(F_u+βF_s)⁻¹g at the anchor δ_u, and the general anchor a, against torch.linalg.solve on
    dense Kronecker products."""
    eig = kronecker_gevp(factors["A_s"], factors["G_s"], factors["A_u"], factors["G_u"], GAMMA)
    F_u = torch.kron(eig.M_A, eig.M_G)
    F_s = torch.kron(factors["A_s"], factors["G_s"])
    gen = torch.Generator().manual_seed(11)
    d_u, g, a = (torch.randn(P, Q, generator=gen, dtype=torch.float64) for _ in range(3))
    ours = eig.reconstruct(first_order_filter(eig.coefficients(d_u), eig.coefficients(d_u),
                                              eig.natural_coefficients(g), eig.lam, beta))
    expected = d_u - beta * tunvec(torch.linalg.solve(F_u + beta * F_s, tvec(g)), P, Q)
    assert torch.allclose(ours, expected, rtol=1e-9, atol=1e-11)
    ours = eig.reconstruct(first_order_filter(eig.coefficients(d_u), eig.coefficients(a),
                                              eig.natural_coefficients(g), eig.lam, beta))
    rhs = F_u @ tvec(d_u) - beta * tvec(g) + beta * F_s @ tvec(a)
    assert torch.allclose(ours, tunvec(torch.linalg.solve(F_u + beta * F_s, rhs), P, Q), rtol=1e-9, atol=1e-11)
    # a safety loss ½‖δ‖²_{F_s} has the gradient F_s a at a: the step is then the plain soft filter
    g_quadratic = tunvec(F_s @ tvec(a), P, Q)
    step = eig.reconstruct(first_order_filter(eig.coefficients(d_u), eig.coefficients(a),
                                              eig.natural_coefficients(g_quadratic), eig.lam, beta))
    assert torch.allclose(step, eig.reconstruct(eig.coefficients(d_u) * soft_filter(eig.lam, beta)), atol=1e-10)


def test_diagonal_eigenbasis_equals_dense_diagonal_problem() -> None:
    """λ, the soft filter and the first-order step of diagonal Fishers against dense diag matrices."""
    gen = torch.Generator().manual_seed(5)
    D_s, D_u = (torch.rand(P, Q, generator=gen, dtype=torch.float64) for _ in range(2))
    eig = diagonal_gevp(D_s, D_u, GAMMA)
    eps = GAMMA * float(D_u.mean())
    F_s, F_u = torch.diag(tvec(D_s)), torch.diag(tvec(D_u) + eps)
    dense = scipy.linalg.eigh(F_s.numpy(), F_u.numpy(), eigvals_only=True)
    np.testing.assert_allclose(np.sort(vec(eig.lam)), np.sort(dense), rtol=1e-10)
    d_u, g = (torch.randn(P, Q, generator=gen, dtype=torch.float64) for _ in range(2))
    beta = 3.0
    filtered = eig.reconstruct(eig.coefficients(d_u) * soft_filter(eig.lam, beta))
    assert torch.allclose(filtered, tunvec(torch.linalg.solve(F_u + beta * F_s, F_u @ tvec(d_u)), P, Q))
    step = eig.reconstruct(first_order_filter(eig.coefficients(d_u), eig.coefficients(d_u),
                                              eig.natural_coefficients(g), eig.lam, beta))
    assert torch.allclose(step, d_u - beta * tunvec(torch.linalg.solve(F_u + beta * F_s, tvec(g)), P, Q))
    # λc² is the safety energy vec(δ)ᵀ F_s vec(δ)
    assert safety_energy(eig.lam, eig.coefficients(d_u)) == pytest.approx(float(tvec(d_u) @ F_s @ tvec(d_u)))


def test_diagonal_variant_never_forms_the_pq_squared_matrix() -> None:
    """p = q = 384 (a 24-expert rank-16 union): the dense (pq)² float64 matrix would be 174 GB."""
    gen = torch.Generator().manual_seed(0)
    D_s, D_u = (torch.rand(384, 384, generator=gen, dtype=torch.float64) for _ in range(2))
    eig = diagonal_gevp(D_s, D_u, GAMMA)
    assert eig.lam.shape == (384, 384)
    assert torch.allclose(eig.lam, D_s / (D_u + GAMMA * D_u.mean()))


def rearranged(F: torch.Tensor, p: int, q: int) -> torch.Tensor:
    """Van Loan's rearrangement (q², p²) of a dense (pq, pq) matrix: row (i, j) is vec of its (i, j) p×p block,
    so that R(A ⊗ G) = vec(A) vec(G)ᵀ."""
    blocks = F.reshape(q, p, q, p).permute(0, 2, 1, 3)  # [i, j] = block (i, j)
    return blocks.reshape(q * q, p * p)


def weighted_mean_of_products(As, Gs, pi) -> torch.Tensor:
    return sum(float(w) * torch.kron(a, g) for w, a, g in zip(pi, As, Gs, strict=True))


def test_nearest_kronecker_is_the_top_singular_pair_of_the_rearrangement() -> None:
    """Against the SVD of the dense rearranged weighted mean; and never worse than the product of means."""
    As = [random_spd(Q, 20 + k, rank=2) for k in range(3)]
    Gs = [random_spd(P, 30 + k) * (k + 1) for k in range(3)]
    pi = pooling_weights([1.0, -0.5, 2.0])
    assert torch.allclose(pi, torch.tensor([1 / 3.5, 0.5 / 3.5, 2 / 3.5], dtype=torch.float64))
    F = weighted_mean_of_products(As, Gs, pi)
    U, S, Vh = torch.linalg.svd(rearranged(F, P, Q))
    best = S[0] * torch.kron(U[:, 0].reshape(Q, Q), Vh[0].reshape(P, P))
    A, G = nearest_kronecker(As, Gs, pi)
    assert torch.allclose(torch.kron(A, G), best, rtol=1e-9, atol=1e-12)
    # positive semidefinite factors (the combination coefficients are ≥ 0)
    assert float(torch.linalg.eigvalsh(A).min()) > -1e-12 and float(torch.linalg.eigvalsh(G).min()) > -1e-12
    mean_A, mean_G = sum(float(w) * a for w, a in zip(pi, As, strict=True)), sum(
        float(w) * g for w, g in zip(pi, Gs, strict=True))
    error = float((F - torch.kron(A, G)).norm() / F.norm())
    assert error <= float((F - torch.kron(mean_A, mean_G)).norm() / F.norm()) + 1e-12
    # one task: its own factors
    A1, G1 = nearest_kronecker(As[:1], Gs[:1], pooling_weights([2.0]))
    assert torch.allclose(torch.kron(A1, G1), torch.kron(As[0], Gs[0]), rtol=1e-10)


def test_first_order_with_the_gradient_outer_product_equals_the_dense_coupled_solve() -> None:
    """Two modules, F'_s = blockdiag(F_s1, F_s2) + g gᵀ (g over both): Sherman–Morrison in the eigenbases
    against torch.linalg.solve of the dense (p1q1 + p2q2) system, with a general anchor."""
    shapes, eigs, F_u, F_s = [(4, 3), (2, 5)], [], [], []
    for i, (p, q) in enumerate(shapes):
        A_s, G_s, A_u, G_u = random_spd(q, 40 + i), random_spd(p, 50 + i), random_spd(q, 60 + i), random_spd(p, 70 + i)
        eig = kronecker_gevp(A_s, G_s, A_u, G_u, GAMMA)
        eigs.append(eig)
        F_u.append(torch.kron(eig.M_A, eig.M_G))
        F_s.append(torch.kron(A_s, G_s))
    gen = torch.Generator().manual_seed(12)
    d_u, g, a = ([torch.randn(p, q, generator=gen, dtype=torch.float64) for p, q in shapes] for _ in range(3))
    beta = 2.5
    ours = first_order_rank_one([e.coefficients(x) for e, x in zip(eigs, d_u, strict=True)],
                                [e.coefficients(x) for e, x in zip(eigs, a, strict=True)],
                                [e.natural_coefficients(x) for e, x in zip(eigs, g, strict=True)],
                                [e.lam for e in eigs], beta)
    flat = lambda parts: torch.cat([tvec(x) for x in parts])  # noqa: E731
    F_model = torch.block_diag(*F_s) + torch.outer(flat(g), flat(g))
    F_util = torch.block_diag(*F_u)
    rhs = F_util @ flat(d_u) - beta * flat(g) + beta * F_model @ flat(a)
    expected = torch.linalg.solve(F_util + beta * F_model, rhs)
    assert torch.allclose(flat([e.reconstruct(c) for e, c in zip(eigs, ours, strict=True)]), expected,
                          rtol=1e-9, atol=1e-11)

"""Exact SVDs of low-rank merged updates: from stacked factors, and from orthonormal bases and a core."""

from __future__ import annotations

import torch

from sst_merge.lowrank import svd_of_dense, svd_of_factored, svd_of_orthonormal


def test_svd_of_orthonormal_equals_the_svd_of_the_dense_update():
    gen = torch.Generator().manual_seed(0)
    U = torch.linalg.qr(torch.randn(300, 12, generator=gen, dtype=torch.float64))[0].float()
    V = torch.linalg.qr(torch.randn(200, 9, generator=gen, dtype=torch.float64))[0].float()
    core = torch.randn(12, 9, generator=gen, dtype=torch.float64)
    core[:, 0] = core[:, 1]  # rank 8, not 9
    dense = U.double() @ core @ V.T.double()
    svd = svd_of_orthonormal(U, core, V)
    assert svd.exact_rank() == 8
    torch.testing.assert_close(svd.S[:8], svd_of_dense(dense.float()).S[:8], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(svd.S[:8], svd_of_factored((U.double() @ core).float(), V.T).S[:8], rtol=1e-5, atol=1e-6)
    B, A = svd.factors(8)
    torch.testing.assert_close((B @ A).double(), dense, rtol=0, atol=1e-5)
    assert svd.rel_error(8) < 1e-6 and 0.1 < svd.rel_error(4) < 1

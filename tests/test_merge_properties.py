"""Property tests of the merge kernels on bare tensors (hypothesis), against brute-force loops."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dense_stack import prune_random
from sst_merge.lora import LoraFactors
from sst_merge.merge_ops import ties_combine
from sst_merge.methods.base import ModuleInputs
from sst_merge.methods.ta import task_arithmetic_factored

seeds = st.integers(min_value=0, max_value=2**31 - 1)
weight_lists = st.lists(st.floats(-3, 3, allow_nan=False, allow_subnormal=False), min_size=1, max_size=4)


def _experts(seed: int, k: int) -> list[LoraFactors]:
    gen = torch.Generator().manual_seed(seed)
    return [
        LoraFactors(A=torch.randn(2 + i, 5, generator=gen), B=torch.randn(6, 2 + i, generator=gen), scale=0.5 + i)
        for i in range(k)
    ]


def _ta(experts: list[LoraFactors], weights: list[float]) -> torch.Tensor:
    inputs = ModuleInputs(name="m", shape=(6, 5), experts=experts, weights=weights, generator=torch.Generator())
    return task_arithmetic_factored(inputs, None).dense()


@settings(max_examples=40, deadline=None)
@given(seed=seeds, weights=weight_lists, scale=st.floats(-4, 4, allow_nan=False))
def test_ta_is_linear_in_the_weights(seed: int, weights: list[float], scale: float) -> None:
    experts = _experts(seed, len(weights))
    combined = _ta(experts, weights)
    expected = sum(w * f.delta() for w, f in zip(weights, experts, strict=True))
    torch.testing.assert_close(combined, expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(_ta(experts, [scale * w for w in weights]), scale * combined, atol=1e-4, rtol=1e-4)


@settings(max_examples=40, deadline=None)
@given(seed=seeds, k=st.integers(1, 5), weights=st.lists(st.floats(0.1, 3), min_size=5, max_size=5))
def test_ties_election_and_disjoint_mean_match_a_loop(seed: int, k: int, weights: list[float]) -> None:
    gen = torch.Generator().manual_seed(seed)
    tensors = torch.randn(k, 3, 4, generator=gen) * (torch.rand(k, 3, 4, generator=gen) > 0.3)
    w = torch.tensor(weights[:k])
    merged = ties_combine(tensors, w)
    for i in range(3):
        for j in range(4):
            column = [float(tensors[t, i, j]) for t in range(k)]
            sign = 1.0 if sum(column) >= 0 else -1.0
            agree = [t for t in range(k) if column[t] != 0 and (column[t] > 0) == (sign > 0)]
            expected = sum(float(w[t]) * column[t] for t in agree) / max(len(agree), 1)
            assert abs(float(merged[i, j]) - expected) < 1e-5
            # The merged entry never opposes the elected sign.
            assert float(merged[i, j]) * sign >= -1e-7


@settings(max_examples=15, deadline=None)
@given(seed=seeds, density=st.floats(0.2, 0.9))
def test_dare_is_unbiased(seed: int, density: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    tensor = torch.randn(8, 8, generator=gen)
    draws = torch.stack([prune_random(tensor, density, gen) for _ in range(3000)])
    # Each entry's mean over draws is within 6 standard errors of the original value.
    stderr = tensor.abs() * ((1 - density) / density / draws.shape[0]) ** 0.5
    assert ((draws.mean(0) - tensor).abs() <= 6 * stderr + 1e-6).all()
    kept = (draws != 0).float().mean()
    assert abs(float(kept) - density) < 0.02

"""The kernels the benchmarks sped up: exact k-th-magnitude pruning and the streaming full-shard writer."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from sst_merge import merge_ops
from sst_merge.writers import stream_full_shard


def topk_prune(tensor: torch.Tensor, density: float) -> torch.Tensor:
    """PEFT's magnitude pruning (top-k by |x|), the reference."""
    flat = tensor.reshape(-1)
    mask = torch.zeros_like(flat)
    mask[torch.topk(flat.abs(), k=int(density * flat.numel())).indices] = 1
    return tensor * mask.reshape(tensor.shape)


def test_prune_matches_topk_on_the_sampled_path():
    gen = torch.Generator().manual_seed(0)
    for density in (0.1, 0.5, 0.9):
        tensor = torch.randn(300, 401, generator=gen)  # > THRESHOLD_SAMPLE entries: the bracketed selection
        assert torch.equal(merge_ops.prune_magnitude(tensor, density), topk_prune(tensor, density))


def test_prune_ties_at_the_cut_keep_the_lowest_indices():
    tensor = torch.randint(-3, 4, (300, 400), generator=torch.Generator().manual_seed(1)).float()
    k = int(0.3 * tensor.numel())
    out = merge_ops.prune_magnitude(tensor, 0.3).reshape(-1)
    mag = tensor.abs().reshape(-1)
    cut = mag.sort(descending=True).values[k - 1]
    keep = mag > cut
    keep[(mag == cut).nonzero().squeeze(1)[: k - int(keep.sum())]] = True
    assert int(keep.sum()) == k
    assert torch.equal(out, tensor.reshape(-1) * keep)


def test_prune_falls_back_when_the_sample_misleads():
    gen = torch.Generator().manual_seed(2)
    flat = torch.randn(200_000, generator=gen)
    step = flat.numel() // merge_ops.THRESHOLD_SAMPLE
    flat[::step] = 0.0  # every sampled entry is zero: the bracket misses the true cut
    cut, above, equal = merge_ops.kth_largest_magnitude(flat, 1000)
    assert cut == flat.abs().sort(descending=True).values[999]
    assert above == int((flat.abs() > cut).sum()) and equal == int((flat.abs() == cut).sum())
    assert torch.equal(merge_ops.prune_magnitude(flat, 0.25), topk_prune(flat, 0.25))


def test_stream_full_shard_equals_adding_the_deltas(tmp_path: Path):
    gen = torch.Generator().manual_seed(3)
    base = {
        "a.weight": torch.randn(5, 7, generator=gen).to(torch.bfloat16),
        "b.weight": torch.randn(3, 4, generator=gen),
        "ids": torch.arange(6),
    }
    (tmp_path / "base").mkdir()
    (tmp_path / "out").mkdir()
    save_file(base, str(tmp_path / "base" / "model.safetensors"), metadata={"format": "pt"})
    deltas = {"a.weight": torch.randn(5, 7, generator=gen), "b.weight": torch.randn(3, 4, generator=gen)}
    changed = stream_full_shard(tmp_path / "base", tmp_path / "out", "model.safetensors", deltas.get)
    out = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert sorted(changed) == ["a.weight", "b.weight"]
    assert out["a.weight"].dtype == torch.bfloat16
    assert torch.equal(out["a.weight"], (base["a.weight"].float() + deltas["a.weight"]).to(torch.bfloat16))
    assert torch.equal(out["b.weight"], base["b.weight"] + deltas["b.weight"])
    assert torch.equal(out["ids"], base["ids"])

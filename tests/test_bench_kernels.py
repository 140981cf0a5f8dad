"""The kernels the benchmarks sped up: row-block streaming merges, exact top-k pruning, the full-shard writer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft.utils import merge_utils
from safetensors.torch import load_file, save_file

from dense_stack import DenseStack, prune_magnitude
from sst_merge import lora, merge_ops, writers
from sst_merge.errors import InputError
from sst_merge.lora import LoraFactors
from sst_merge.methods.base import ModuleInputs, SeededSparsifyParams, SparsifyParams, module_generator
from sst_merge.methods.dare_linear import dare_linear_module
from sst_merge.methods.dare_ties import dare_ties_module
from sst_merge.methods.magnitude_prune import magnitude_prune_module
from sst_merge.methods.ties import ties_module
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
        assert torch.equal(prune_magnitude(tensor, density), topk_prune(tensor, density))


def test_prune_ties_at_the_cut_keep_the_lowest_indices():
    tensor = torch.randint(-3, 4, (300, 400), generator=torch.Generator().manual_seed(1)).float()
    k = int(0.3 * tensor.numel())
    out = prune_magnitude(tensor, 0.3).reshape(-1)
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
    (cut,) = merge_ops.magnitude_cuts(DenseStack(flat.reshape(1, -1)), 1000)
    assert cut.value == flat.abs().sort(descending=True).values[999]
    assert cut.above == int((flat.abs() > cut.value).sum()) and cut.equal == int((flat.abs() == cut.value).sum())
    assert torch.equal(prune_magnitude(flat, 0.25), topk_prune(flat, 0.25))


@pytest.mark.parametrize("chunk", [8, 16, 64 << 20])  # bytes read at a time: less than a row, a row, the whole tensor
def test_stream_full_shard_equals_adding_the_deltas(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int):
    monkeypatch.setattr(writers, "COPY_CHUNK", chunk)
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
    changed = stream_full_shard(tmp_path / "base", tmp_path / "out", "model.safetensors",
                                lambda name: deltas[name].clone() if name in deltas else None)
    out = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert sorted(changed) == ["a.weight", "b.weight"]
    assert out["a.weight"].dtype == torch.bfloat16
    assert torch.equal(out["a.weight"], (base["a.weight"].float() + deltas["a.weight"]).to(torch.bfloat16))
    assert torch.equal(out["b.weight"], base["b.weight"] + deltas["b.weight"])
    assert torch.equal(out["ids"], base["ids"])


def _module_inputs(experts: list, shape: tuple[int, int], seed: int = 5) -> ModuleInputs:
    return ModuleInputs(name="m", shape=shape, experts=experts, weights=[0.7, -0.4, 1.3],
                        generator=module_generator(seed, "m"))


@pytest.mark.parametrize("method", ["ties", "magnitude_prune", "dare_ties", "dare_linear"])
def test_streamed_kernels_equal_peft_over_many_row_blocks(method: str, monkeypatch: pytest.MonkeyPatch):
    """The kernels see ΔW a row block at a time (997 entries here: uneven blocks); the result is PEFT's."""
    monkeypatch.setattr(lora, "DELTA_BLOCK_ENTRIES", 997)
    gen = torch.Generator().manual_seed(4)
    shape = (300, 211)
    experts = [LoraFactors(A=torch.randn(4, 211, generator=gen), B=torch.randn(300, 4, generator=gen), scale=0.5),
               None,  # an expert without this module: ΔW = 0, and DARE still draws its mask
               LoraFactors(A=torch.randn(8, 211, generator=gen), B=torch.randn(300, 8, generator=gen), scale=2.0)]
    inputs = _module_inputs(experts, shape)
    deltas = [f.delta() if f is not None else torch.zeros(shape) for f in experts]
    weights = torch.tensor(inputs.weights)
    kernel, params = {"ties": (ties_module, SparsifyParams(density=0.4)),
                      "magnitude_prune": (magnitude_prune_module, SparsifyParams(density=0.4)),
                      "dare_ties": (dare_ties_module, SeededSparsifyParams(density=0.4, seed=5)),
                      "dare_linear": (dare_linear_module, SeededSparsifyParams(density=0.4, seed=5))}[method]
    torch.manual_seed(inputs.generator.initial_seed())  # PEFT draws DARE's masks from the global generator
    expected = getattr(merge_utils, method)(deltas, weights, 0.4)
    torch.testing.assert_close(kernel(inputs, params).dense(), expected, atol=1e-5, rtol=1e-5)


def test_module_rows_equal_each_experts_delta_rows_bit_for_bit(monkeypatch: pytest.MonkeyPatch):
    """The batched matmul of `ModuleInputs.rows` gives each expert's own ΔW rows exactly: mixed ranks,
    a missing expert, and scales that are not powers of two (rsLoRA's alpha/√r)."""
    monkeypatch.setattr(lora, "DELTA_BLOCK_ENTRIES", 997)
    gen = torch.Generator().manual_seed(9)
    shape = (300, 211)

    def factors(rank: int, scale: float) -> LoraFactors:
        return LoraFactors(A=torch.randn(rank, 211, generator=gen), B=torch.randn(300, rank, generator=gen),
                           scale=scale)

    experts = [factors(4, 0.3), None, factors(8, 16 / 8**0.5), factors(4, 1.7)]
    inputs = ModuleInputs(name="m", shape=shape, experts=experts, weights=[1.0] * 4, generator=torch.Generator())
    for rows in inputs.blocks():
        block = inputs.rows(rows)
        for k, factors in enumerate(experts):
            expected = torch.zeros(rows.stop - rows.start, 211) if factors is None else factors.delta_rows(rows)
            assert torch.equal(block[k], expected)


def test_trimming_breaks_ties_at_the_cut_by_flat_index_across_blocks(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(lora, "DELTA_BLOCK_ENTRIES", 500)
    gen = torch.Generator().manual_seed(6)
    shape = (120, 90)
    experts = [LoraFactors(A=torch.randint(-1, 2, (2, 90), generator=gen).float(),
                           B=torch.randint(-1, 2, (120, 2), generator=gen).float(), scale=1.0) for _ in range(3)]
    blocks = list(merge_ops.trimmed_blocks(_module_inputs(experts, shape), 0.3))
    trimmed = torch.cat([block for _, block in blocks], dim=1)
    k = int(0.3 * 120 * 90)
    for task, factors in enumerate(experts):
        flat = factors.delta().reshape(-1)
        mag = flat.abs()
        cut = mag.sort(descending=True).values[k - 1]
        keep = mag > cut
        keep[(mag == cut).nonzero().squeeze(1)[: k - int(keep.sum())]] = True
        assert int((mag == cut).sum()) > k - int((mag > cut).sum())  # the case: more ties than places
        assert torch.equal(trimmed[task].reshape(-1), flat * keep)


def test_stream_full_shard_names_a_corrupt_or_truncated_base(tmp_path: Path):
    (tmp_path / "base").mkdir()
    (tmp_path / "out").mkdir()
    shard = tmp_path / "base" / "model.safetensors"
    shard.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{oops")
    with pytest.raises(InputError, match="not a safetensors file") as err:
        stream_full_shard(tmp_path / "base", tmp_path / "out", shard.name, lambda name: None)
    assert str(shard) in str(err.value)
    save_file({"w.weight": torch.ones(64, 64)}, str(shard))
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(InputError, match="truncated"):
        stream_full_shard(tmp_path / "base", tmp_path / "out", shard.name, lambda name: torch.zeros(64, 64))


def test_dropped_blocks_draw_peft_masks_for_more_than_eight_tasks(monkeypatch: pytest.MonkeyPatch):
    """Masks are kept as bits, eight tasks to a byte: ten tasks use two bytes and still draw PEFT's masks."""
    monkeypatch.setattr(lora, "DELTA_BLOCK_ENTRIES", 333)
    tensors = torch.randn(10, 40, 50, generator=torch.Generator().manual_seed(7))
    blocks = merge_ops.dropped_blocks(DenseStack(tensors), 0.3, torch.Generator().manual_seed(8))
    dropped = torch.cat([block for _, block in blocks], dim=1)
    reference = torch.Generator().manual_seed(8)
    for task in range(10):
        mask = torch.bernoulli(torch.full_like(tensors[task], 0.3), generator=reference)
        assert torch.equal(dropped[task], tensors[task] * mask / 0.3)

"""Every classic method against peft.utils.merge_utils on the dense ΔW of every module."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft.utils import merge_utils
from safetensors.torch import load_file

from sst_merge.lora import load_adapter
from sst_merge.merge import MergeConfig, merge_adapters
from sst_merge.methods.base import module_generator

WEIGHTS = [0.7, 1.3, -0.4]
DENSITY = 0.4


def _peft_reference(method: str, deltas: list[torch.Tensor], module: str, seed: int) -> torch.Tensor:
    weights = torch.tensor(WEIGHTS)
    if method == "ta":
        return merge_utils.task_arithmetic(deltas, weights)
    if method == "ties":
        return merge_utils.ties(deltas, weights, DENSITY)
    if method == "magnitude_prune":
        return merge_utils.magnitude_prune(deltas, weights, DENSITY)
    # PEFT draws DARE's masks from the global generator: seed it as our per-module generator is seeded.
    torch.manual_seed(module_generator(seed, module).initial_seed())
    return getattr(merge_utils, method)(deltas, weights, DENSITY)


def _dense_deltas(adapters: list[Path], module: str, shape: tuple[int, int]) -> list[torch.Tensor]:
    out = []
    for path in adapters:
        factors = load_adapter(path).modules.get(module)
        out.append(factors.delta() if factors is not None else torch.zeros(shape))
    return out


@pytest.mark.parametrize("method", ["ta", "ties", "magnitude_prune", "dare_linear", "dare_ties"])
def test_full_output_equals_peft_merge_utils(method: str, tiny_base: Path, tiny_adapters: list[Path], tmp_path: Path):
    params = {} if method == "ta" else {"density": DENSITY}
    if method.startswith("dare"):
        params["seed"] = 7
    config = MergeConfig(
        base=tiny_base,
        adapters=tiny_adapters,
        method=method,
        weights=WEIGHTS,
        format="full",
        output=tmp_path / "out",
        **params,
    )
    report = merge_adapters(config)
    base_w = load_file(str(tiny_base / "model.safetensors"))
    merged_w = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert set(base_w) == set(merged_w)
    assert len(report.modules) == 14
    for module in report.modules:
        key = f"{module}.weight"
        expected = _peft_reference(method, _dense_deltas(tiny_adapters, module, base_w[key].shape), module, 7)
        torch.testing.assert_close(merged_w[key] - base_w[key], expected, atol=1e-5, rtol=1e-5)
    for key in set(base_w) - {f"{m}.weight" for m in report.modules}:
        assert torch.equal(base_w[key], merged_w[key])


@pytest.mark.parametrize("method", ["ta", "ties", "magnitude_prune", "dare_linear", "dare_ties"])
def test_peft_output_at_full_rank_equals_peft_merge_utils(
    method: str, tiny_base: Path, tiny_adapters: list[Path], tmp_path: Path
):
    params = {} if method == "ta" else {"density": DENSITY}
    # rank 16 = min(d_out, d_in) of the tiny model: the factorisation is exact.
    config = MergeConfig(
        base=tiny_base,
        adapters=tiny_adapters,
        method=method,
        weights=WEIGHTS,
        rank=16,
        output=tmp_path / "out",
        **params,
    )
    report = merge_adapters(config)
    merged = load_adapter(tmp_path / "out")
    assert report.max_rel_error < 1e-6
    for module in report.modules:
        shape = merged.modules[module].shape
        expected = _peft_reference(method, _dense_deltas(tiny_adapters, module, shape), module, 0)
        torch.testing.assert_close(merged.modules[module].delta(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("ta", {}),
        ("ties", {"density": 1.0}),
        ("magnitude_prune", {"density": 1.0}),
        ("dare_linear", {"density": 1.0}),
        ("dare_ties", {"density": 1.0}),
    ],
)
def test_single_adapter_weight_one_reproduces_it(
    method: str, params: dict, tiny_base: Path, tiny_adapters: list[Path], tmp_path: Path
):
    source = load_adapter(tiny_adapters[0])
    merge_adapters(
        MergeConfig(base=tiny_base, adapters=[tiny_adapters[0]], method=method, output=tmp_path / "o", **params)
    )
    merged = load_adapter(tmp_path / "o")
    assert set(merged.modules) == set(source.modules)
    for module, factors in source.modules.items():
        torch.testing.assert_close(merged.modules[module].delta(), factors.delta(), atol=1e-6, rtol=1e-6)


def test_dare_same_seed_same_bytes(tiny_base: Path, tiny_adapters: list[Path], tmp_path: Path):
    outputs = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        merge_adapters(
            MergeConfig(
                base=tiny_base,
                adapters=tiny_adapters,
                method="dare_ties",
                density=0.5,
                seed=seed,
                output=tmp_path / name,
            )
        )
        outputs.append((tmp_path / name / "adapter_model.safetensors").read_bytes())
    assert outputs[0] == outputs[1]
    assert outputs[0] != outputs[2]


def test_ta_exact_rank_is_total_rank(tiny_base: Path, tiny_adapters: list[Path], tmp_path: Path):
    report = merge_adapters(MergeConfig(base=tiny_base, adapters=tiny_adapters, method="ta", output=tmp_path / "o"))
    # Random factors are in general position: the stacked rank is 4 + 2 (+ 3 where adapter 2 is present).
    assert report.rank == 9
    assert report.max_rel_error == 0.0

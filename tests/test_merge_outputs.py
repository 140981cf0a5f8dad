"""Merged outputs load unchanged in PEFT and transformers and compute what ΔW says they should."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from sst_merge.lora import load_adapter
from sst_merge.merge import MergeConfig, merge_adapters

TOKENS = torch.tensor([[1, 5, 9, 33, 2, 17, 40, 63]])


def _logits_with_delta(base: Path, deltas: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits of the base model with ΔW added to each named Linear weight by hand."""
    model = AutoModelForCausalLM.from_pretrained(base)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, delta in deltas.items():
            modules[name].weight += delta
        return model(TOKENS).logits


def test_peft_output_loads_and_matches_hand_added_delta(tiny_base: Path, tiny_adapters: list[Path], tmp_path: Path):
    weights = [0.5, 1.0, 2.0]
    merge_adapters(
        MergeConfig(base=tiny_base, adapters=tiny_adapters, method="ta", weights=weights, output=tmp_path / "m")
    )
    expected_deltas: dict[str, torch.Tensor] = {}
    for w, path in zip(weights, tiny_adapters, strict=True):
        for name, factors in load_adapter(path).modules.items():
            expected_deltas[name] = expected_deltas.get(name, 0) + w * factors.delta()
    expected = _logits_with_delta(tiny_base, expected_deltas)
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base), tmp_path / "m")
    with torch.no_grad():
        got = peft_model(TOKENS).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    base_logits = _logits_with_delta(tiny_base, {})
    assert not torch.allclose(got, base_logits, atol=1e-3)


def test_full_output_loads_with_automodel(tiny_base: Path, tiny_adapters: list[Path], tmp_path: Path):
    merge_adapters(
        MergeConfig(base=tiny_base, adapters=tiny_adapters[:2], method="ta", format="full", output=tmp_path / "full")
    )
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "full")
    deltas = {name: f.delta() for name, f in load_adapter(tiny_adapters[0]).modules.items()}
    for name, f in load_adapter(tiny_adapters[1]).modules.items():
        deltas[name] = deltas[name] + f.delta()
    with torch.no_grad():
        torch.testing.assert_close(merged(TOKENS).logits, _logits_with_delta(tiny_base, deltas), atol=1e-4, rtol=1e-4)
    assert (tmp_path / "full" / "config.json").is_file()
    assert (tmp_path / "full" / "sst_merge_provenance.json").is_file()


def test_sharded_bf16_base_full_output(tiny_adapters: list[Path], tmp_path: Path):
    """A sharded bf16 base keeps its shards, index and dtype in the merged model."""
    from sst_merge.synthetic import make_random_llama

    base = tmp_path / "base"
    model = AutoModelForCausalLM.from_pretrained(make_random_llama(tmp_path / "b0"), dtype=torch.bfloat16)
    model.save_pretrained(base, max_shard_size="3KB")
    assert (base / "model.safetensors.index.json").is_file()
    merge_adapters(
        MergeConfig(base=base, adapters=[tiny_adapters[0]], method="ta", format="full", output=tmp_path / "full")
    )
    shards = sorted(p.name for p in (tmp_path / "full").glob("*.safetensors"))
    assert shards == sorted(p.name for p in base.glob("*.safetensors"))
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "full")
    assert merged.dtype == torch.bfloat16
    deltas = {name: f.delta() for name, f in load_adapter(tiny_adapters[0]).modules.items()}
    w0 = dict(model.named_parameters())
    for name, delta in deltas.items():
        expected = (w0[f"{name}.weight"].float() + delta).to(torch.bfloat16)
        assert torch.equal(dict(merged.named_parameters())[f"{name}.weight"], expected)

"""Each configured real architecture, shrunk (random weights, real model_type, GQA as the real one),
loads, takes LoRA adapters on all seven projections, and merges through the same code path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoConfig, AutoModelForCausalLM

from sst_merge.base_model import linear_shapes
from sst_merge.experiments.config import load_experiment_config
from sst_merge.lora import load_adapter
from sst_merge.merge import MergeConfig, merge_adapters
from sst_merge.synthetic import make_random_adapter

CONFIG = Path(__file__).parents[1] / "configs" / "experiment_config_real.yaml"

# The real configs' model_type and attention layout (heads : KV heads), shrunk in width and depth.
SHRUNK = {
    "mistralai/Mistral-7B-Instruct-v0.3": ("mistral", 32, 8),
    "meta-llama/Llama-3.1-8B-Instruct": ("llama", 32, 8),
    "Qwen/Qwen2.5-14B-Instruct": ("qwen2", 40, 8),
}


def _shrunk(model_type: str, heads: int, kv_heads: int) -> AutoConfig:
    head_dim = 4
    return AutoConfig.for_model(
        model_type,
        vocab_size=128,
        hidden_size=heads * head_dim,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=64,
    )


def test_every_hub_model_in_the_config_is_covered():
    config = load_experiment_config(CONFIG)
    hub_ids = {spec.hub_id for spec in config.models.values() if spec.kind == "hub"}
    assert hub_ids == set(SHRUNK)


@pytest.mark.parametrize("hub_id", sorted(SHRUNK))
def test_shrunk_architecture_merges(hub_id: str, tmp_path: Path):
    model_type, heads, kv_heads = SHRUNK[hub_id]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_shrunk(model_type, heads, kv_heads))
    assert model.config.model_type == model_type
    base = tmp_path / "base"
    model.save_pretrained(base)
    shapes = linear_shapes(base)
    k_proj = shapes["model.layers.0.self_attn.k_proj"]
    assert k_proj[0] * heads == shapes["model.layers.0.self_attn.q_proj"][0] * kv_heads  # GQA kept
    adapters = [make_random_adapter(base, tmp_path / f"a{i}", seed=i, r=4, std=0.05) for i in range(2)]
    merge_adapters(
        MergeConfig(base=base, adapters=adapters, method="ties", density=0.5, rank=64, output=tmp_path / "merged")
    )
    merged = load_adapter(tmp_path / "merged")
    assert len(merged.modules) == 2 * 7
    tokens = torch.tensor([[1, 2, 3, 4, 5]])
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), tmp_path / "merged")
    with torch.no_grad():
        assert torch.isfinite(peft_model(tokens).logits).all()

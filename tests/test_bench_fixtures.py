"""The benchmarks' random base, written shard by shard, is a checkpoint transformers and our merge read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from benchmarks import fixtures
from transformers import AutoModelForCausalLM

from sst_merge.base_model import adapted_module_shapes

SMALL = dict(hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2, vocab_size=64)


def test_sharded_random_llama_loads_in_transformers_with_every_weight(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(fixtures, "SHARD_BYTES", 8000)  # a few tensors per shard
    out = fixtures.write_random_llama(tmp_path / "base", seed=3, num_hidden_layers=3, **SMALL)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and all((out / name).is_file() for name in shards)
    assert not (out.parent / "base.partial").exists()
    model = AutoModelForCausalLM.from_pretrained(out)
    state = model.state_dict()
    assert set(index["weight_map"]) == set(state)
    assert model.config.num_hidden_layers == 3
    assert json.loads((out / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    q = state["model.layers.2.self_attn.q_proj.weight"]
    assert q.dtype == torch.bfloat16 and 0.01 < float(q.float().std()) < 0.03  # loaded as saved, not re-initialised
    assert torch.equal(state["model.norm.weight"], torch.ones(32, dtype=torch.bfloat16))
    module = "model.layers.1.self_attn.k_proj"
    assert adapted_module_shapes(out, {module})[module] == (16, 32)  # read from the shards' headers

def test_one_shard_is_a_single_model_file(tmp_path: Path):
    out = fixtures.write_random_llama(tmp_path / "base", seed=0, num_hidden_layers=1, **SMALL)
    assert (out / "model.safetensors").is_file() and not (out / "model.safetensors.index.json").exists()
    assert AutoModelForCausalLM.from_pretrained(out).config.num_hidden_layers == 1

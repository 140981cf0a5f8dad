"""The base model's Linear shapes: read from the safetensors headers, or from the model class on the meta device."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from sst_merge import base_model
from sst_merge.base_model import adapted_module_shapes, linear_shapes, natural_order
from sst_merge.errors import InputError


def _no_model_class(path: object) -> None:
    raise AssertionError("the model class was instantiated")


def test_header_shapes_equal_the_model_class_shapes(tiny_base: Path, monkeypatch: pytest.MonkeyPatch):
    linear = linear_shapes(tiny_base)
    adapted = [name for name in linear if name.endswith(("q_proj", "down_proj"))]
    monkeypatch.setattr(base_model, "linear_shapes", _no_model_class)
    shapes = adapted_module_shapes(tiny_base, adapted)
    assert {name: shapes[name] for name in linear if name in shapes} == {n: linear[n] for n in shapes if n in linear}
    assert set(linear) - set(shapes) <= {"lm_head"}  # a tied head is not stored; everything else is read
    assert list(shapes) == natural_order(shapes)


def test_sharded_base_reads_every_shard(tiny_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    model.save_pretrained(tmp_path / "sharded", max_shard_size="3KB")
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 2
    linear = linear_shapes(tiny_base)
    monkeypatch.setattr(base_model, "linear_shapes", _no_model_class)
    shapes = adapted_module_shapes(tmp_path / "sharded", ["model.layers.1.mlp.up_proj"])
    assert all(shapes[name] == linear[name] for name in linear if name != "lm_head")


def test_falls_back_to_the_model_class(tiny_base: Path, tmp_path: Path):
    """A module the files do not store (a tied head), or a .bin checkpoint: shapes from the model class."""
    linear = linear_shapes(tiny_base)
    assert adapted_module_shapes(tiny_base, ["lm_head"])["lm_head"] == linear["lm_head"]
    shutil.copytree(tiny_base, tmp_path / "bin", ignore=shutil.ignore_patterns("*.safetensors"))
    torch.save(AutoModelForCausalLM.from_pretrained(tiny_base).state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    assert adapted_module_shapes(tmp_path / "bin", ["model.layers.0.self_attn.q_proj"]) == {
        name: linear[name] for name in natural_order(linear)
    }


def test_bad_bases_are_named(tiny_base: Path, tmp_path: Path):
    with pytest.raises(InputError, match="not found"):
        adapted_module_shapes(tmp_path / "nowhere", [])
    broken = tmp_path / "broken"
    shutil.copytree(tiny_base, broken)
    (broken / "config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(InputError, match="cannot read model config") as err:
        adapted_module_shapes(broken, [])
    assert str(broken / "config.json") in str(err.value)
    (broken / "config.json").write_text(json.dumps({"model_type": "llama"}), encoding="utf-8")
    (broken / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a.weight": "gone.safetensors"}}))
    with pytest.raises(InputError, match="gone.safetensors"):
        adapted_module_shapes(broken, [])
    (broken / "model.safetensors.index.json").write_text("[]")
    with pytest.raises(InputError, match="corrupt safetensors index"):
        adapted_module_shapes(broken, [])


def test_natural_order():
    names = ["model.layers.10.q", "model.layers.2.q", "lm_head", "model.layers.2.k"]
    assert natural_order(names) == ["lm_head", "model.layers.2.k", "model.layers.2.q", "model.layers.10.q"]

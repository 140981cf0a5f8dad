"""Bad input to `sst-merge merge`: one clear line naming the file and the problem, exit 2, no output."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sst_merge.cli import main
from sst_merge.synthetic import make_random_llama


def _run(capsys: pytest.CaptureFixture[str], args: list[str]) -> tuple[int, str]:
    capsys.readouterr()  # drop what test set-up printed
    code = main(["merge", *map(str, args)])
    return code, capsys.readouterr().err


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _common(base: Path, adapters: list[Path], out: Path) -> list[object]:
    args: list[object] = ["--base", base, "--output", out]
    for a in adapters:
        args += ["--adapter", a]
    return args


def _assert_rejected(code: int, err: str, out: Path, *needles: str) -> None:
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}*"))


def test_missing_adapter_dir(tiny_base, tmp_path, capsys):
    out = tmp_path / "out"
    code, err = _run(capsys, [*_common(tiny_base, [tmp_path / "nope"], out), "--method", "ta"])
    _assert_rejected(code, err, out, str(tmp_path / "nope"), "not found")


def test_missing_weights_file(tiny_base, tiny_adapters, tmp_path, capsys):
    bad = _copy(tiny_adapters[0], tmp_path / "bad")
    (bad / "adapter_model.safetensors").unlink()
    out = tmp_path / "out"
    code, err = _run(capsys, [*_common(tiny_base, [bad], out), "--method", "ta"])
    _assert_rejected(code, err, out, str(bad), "missing adapter_model.safetensors")


def test_corrupt_weights_file(tiny_base, tiny_adapters, tmp_path, capsys):
    bad = _copy(tiny_adapters[0], tmp_path / "bad")
    (bad / "adapter_model.safetensors").write_bytes(b"\x00garbage" * 10)
    out = tmp_path / "out"
    code, err = _run(capsys, [*_common(tiny_base, [bad], out), "--method", "ta"])
    _assert_rejected(code, err, out, str(bad / "adapter_model.safetensors"), "corrupt")


def test_corrupt_config(tiny_base, tiny_adapters, tmp_path, capsys):
    bad = _copy(tiny_adapters[0], tmp_path / "bad")
    (bad / "adapter_config.json").write_text("{not json")
    out = tmp_path / "out"
    code, err = _run(capsys, [*_common(tiny_base, [bad], out), "--method", "ta"])
    _assert_rejected(code, err, out, str(bad / "adapter_config.json"), "corrupt JSON")


def test_shape_mismatch(tiny_adapters, tmp_path, capsys):
    wide = make_random_llama(tmp_path / "wide", hidden_size=32, intermediate_size=24)
    out = tmp_path / "out"
    code, err = _run(capsys, [*_common(wide, [tiny_adapters[0]], out), "--method", "ta"])
    _assert_rejected(code, err, out, str(tiny_adapters[0]), "does not fit base weight")


def test_target_module_missing_in_base(tiny_adapters, tmp_path, capsys):
    shallow = make_random_llama(tmp_path / "shallow", num_hidden_layers=1)
    out = tmp_path / "out"
    # tiny_adapters[2] adapts layer 1 only, which a one-layer base lacks.
    code, err = _run(capsys, [*_common(shallow, [tiny_adapters[2]], out), "--method", "ta"])
    _assert_rejected(code, err, out, str(tiny_adapters[2]), "model.layers.1", "does not exist in the base")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_or_inf_in_adapter(tiny_base, tiny_adapters, tmp_path, capsys, value):
    bad = _copy(tiny_adapters[0], tmp_path / "bad")
    tensors = load_file(str(bad / "adapter_model.safetensors"))
    key = sorted(tensors)[0]
    tensors[key] = tensors[key].clone()
    tensors[key][0, 0] = value
    save_file(tensors, str(bad / "adapter_model.safetensors"))
    out = tmp_path / "out"
    code, err = _run(capsys, [*_common(tiny_base, [bad], out), "--method", "ta"])
    _assert_rejected(code, err, out, str(bad / "adapter_model.safetensors"), "NaN or Inf")


def test_weights_count_mismatch(tiny_base, tiny_adapters, tmp_path, capsys):
    out = tmp_path / "out"
    code, err = _run(capsys, [*_common(tiny_base, tiny_adapters[:2], out), "--method", "ta", "--weights", "1,2,3"])
    _assert_rejected(code, err, out, "3 weights given for 2 adapters")


@pytest.mark.parametrize("density", ["0", "1.5", "-0.1"])
def test_density_out_of_range(tiny_base, tiny_adapters, tmp_path, capsys, density):
    out = tmp_path / "out"
    code, err = _run(capsys, [*_common(tiny_base, tiny_adapters[:2], out), "--method", "ties", "--density", density])
    _assert_rejected(code, err, out, "density")


def test_unknown_method(tiny_base, tiny_adapters, tmp_path, capsys):
    out = tmp_path / "out"
    code, err = _run(capsys, [*_common(tiny_base, tiny_adapters[:1], out), "--method", "slerp"])
    _assert_rejected(code, err, out, "unknown merge method 'slerp'", "ties")


def test_unknown_config_key(tiny_base, tiny_adapters, tmp_path, capsys):
    out = tmp_path / "out"
    config = tmp_path / "merge.yaml"
    config.write_text(
        f"base: {tiny_base}\nadapters: [{tiny_adapters[0]}]\nmethod: ties\ndensity: 0.5\noutput: {out}\nbogus_key: 3\n"
    )
    code, err = _run(capsys, [config])
    _assert_rejected(code, err, out, str(config), "bogus_key", "unknown key")


def test_existing_output_refused_without_force(tiny_base, tiny_adapters, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    code, err = _run(capsys, [*_common(tiny_base, tiny_adapters[:1], out), "--method", "ta"])
    assert code == 2 and "already exists" in err and str(out) in err
    assert (out / "keep.txt").read_text() == "precious"
    assert _run(capsys, [*_common(tiny_base, tiny_adapters[:1], out), "--method", "ta", "--force"])[0] == 0
    assert not (out / "keep.txt").exists() and (out / "adapter_model.safetensors").is_file()


def test_yaml_config_and_dry_run(tiny_base, tiny_adapters, tmp_path, capsys):
    out = tmp_path / "out"
    config = tmp_path / "merge.yaml"
    config.write_text(
        json.dumps(
            {
                "base": str(tiny_base),
                "adapters": [str(a) for a in tiny_adapters],
                "method": "dare_ties",
                "density": 0.5,
                "seed": 3,
                "weights": [1, 0.5, 0.25],
                "output": str(out),
            }
        )
    )
    assert _run(capsys, [config, "--dry-run"])[0] == 0
    assert not out.exists()
    assert _run(capsys, [config])[0] == 0
    record = json.loads((out / "sst_merge_provenance.json").read_text())
    assert record["params"] == {"density": 0.5, "seed": 3, "device": "cpu"}
    assert record["weights"] == [1, 0.5, 0.25]
    assert len(record["adapters"]) == 3 and "adapter_model.safetensors" in record["adapters"][0]["files"]


def test_interrupted_merge_leaves_nothing(tiny_base, tiny_adapters, tmp_path, monkeypatch):
    """A failure mid-merge removes the temporary directory and leaves no output."""
    from sst_merge import merge as merge_module

    def explode(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(merge_module, "write_peft_adapter", explode)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        merge_module.merge_adapters(
            merge_module.MergeConfig(base=tiny_base, adapters=tiny_adapters[:1], method="ta", output=out)
        )
    assert not out.exists() and not list(tmp_path.glob(".out*"))


@pytest.mark.parametrize("shard", ["../x.safetensors", "ABSOLUTE", "sub/x.safetensors"])
def test_shard_name_outside_the_base_is_refused(tiny_base, tiny_adapters, tmp_path, capsys, shard):
    """A base whose index names a shard outside it: the full writer would write that path; nothing is written."""
    victim = tmp_path / "x.safetensors"
    shutil.copy(tiny_base / "model.safetensors", victim)
    before = victim.read_bytes()
    if shard == "ABSOLUTE":
        shard = str(victim)
    base = _copy(tiny_base, tmp_path / "base")
    (base / "model.safetensors").unlink()
    (base / "sub").mkdir()
    shutil.copy(victim, base / "sub" / "x.safetensors")
    names = load_file(str(victim))
    index = base / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": dict.fromkeys(names, shard)}))
    out = tmp_path / "out"
    code, err = _run(capsys, [*_common(base, tiny_adapters[:1], out), "--method", "ta", "--format", "full"])
    _assert_rejected(code, err, out, str(index), repr(shard), "not a plain file name")
    assert victim.read_bytes() == before


def _edit_config(adapter: Path, **changes: object) -> Path:
    config = json.loads((adapter / "adapter_config.json").read_text())
    config.update(changes)
    (adapter / "adapter_config.json").write_text(json.dumps(config))  # NaN and Infinity as JSON writes them
    return adapter / "adapter_config.json"


@pytest.mark.parametrize("changes, needle", [
    ({"lora_alpha": float("nan")}, "lora_alpha must be a finite number, got nan"),
    ({"lora_alpha": float("inf")}, "lora_alpha must be a finite number, got inf"),
    ({"r": float("-inf")}, "r must be a finite number"),
    ({"alpha_pattern": ["q_proj"]}, "alpha_pattern must be a mapping"),
    ({"alpha_pattern": {"q_proj[(": 4}}, "alpha_pattern key 'q_proj[(' is not a regular expression"),
    ({"alpha_pattern": {"q_proj": "16"}}, "alpha_pattern['q_proj'] must be a finite number, got '16'"),
    ({"alpha_pattern": {"q_proj": float("nan")}}, "alpha_pattern['q_proj'] must be a finite number, got nan"),
])
def test_bad_config_numbers(tiny_base, tiny_adapters, tmp_path, capsys, changes, needle):
    bad = _copy(tiny_adapters[0], tmp_path / "bad")
    config = _edit_config(bad, **changes)
    out = tmp_path / "out"
    code, err = _run(capsys, [*_common(tiny_base, [bad], out), "--method", "ta", "--format", "full"])
    _assert_rejected(code, err, out, str(config), needle)


def test_zero_rank_tensors(tiny_base, tiny_adapters, tmp_path, capsys):
    bad = _copy(tiny_adapters[0], tmp_path / "bad")
    tensors = load_file(str(bad / "adapter_model.safetensors"))
    for key in tensors:
        if "layers.0.self_attn.q_proj" in key:
            tensors[key] = tensors[key][:0] if "lora_A" in key else tensors[key][:, :0]
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(bad / "adapter_model.safetensors"))
    out = tmp_path / "out"
    code, err = _run(capsys, [*_common(tiny_base, [bad], out), "--method", "ta"])
    _assert_rejected(code, err, out, str(bad / "adapter_model.safetensors"), "q_proj has rank 0")


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("payload", ["pickle", "junk"])
def test_bin_that_is_not_a_tensor_pickle(tiny_base, tiny_adapters, tmp_path, capsys, payload):
    """A malicious or corrupt adapter_model.bin: not run, one line without torch's advice to drop weights_only."""
    import pickle

    bad = _copy(tiny_adapters[0], tmp_path / "bad")
    (bad / "adapter_model.safetensors").unlink()
    marker = tmp_path / "pwned"
    data = pickle.dumps({"x": _Evil(marker)}, protocol=2) if payload == "pickle" else b"\x80\x04junkjunk"
    (bad / "adapter_model.bin").write_bytes(data)
    out = tmp_path / "out"
    code, err = _run(capsys, [*_common(tiny_base, [bad], out), "--method", "ta"])
    _assert_rejected(code, err, out, str(bad / "adapter_model.bin"),
                     "refused: the pickle holds objects other than tensors" if payload == "pickle" else "corrupt")
    assert "weights_only" not in err and not marker.exists()


def test_overflowing_weights_write_nothing(tiny_base, tiny_adapters, tmp_path, capsys):
    """Finite weights whose merge overflows float32: no Inf/NaN output. (At 1e38 the full model's ΔW is still
    finite, about 1e37, and is written; the PEFT factors, √S of its SVD, are not.)"""
    for fmt, weights in (("peft", "1e38,1e38"), ("full", "3e38,3e38")):
        out = tmp_path / fmt
        code, err = _run(capsys, [*_common(tiny_base, tiny_adapters[:2], out), "--method", "ties",
                                  "--weights", weights, "--format", fmt])
        _assert_rejected(code, err, out, "has NaN or Inf values", "weights or LoRA scales too large")


def test_update_that_overflows_a_float16_base(tiny_adapters, tmp_path, capsys):
    """ΔW finite in float32, W0 + ΔW beyond float16's range: the full writer refuses it mid-write, and the
    output it was to replace (--force) is left as it was."""
    half = make_random_llama(tmp_path / "half", dtype=torch.float16)
    big = _copy(tiny_adapters[0], tmp_path / "big")
    _edit_config(big, lora_alpha=1e7)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    code, err = _run(capsys, [*_common(half, [big], out), "--method", "ta", "--format", "full", "--force"])
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "W0 + ΔW of model.layers.0" in err and "NaN or Inf values in F16" in err
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and not list(tmp_path.glob(".out*"))
    out = tmp_path / "peft"
    assert _run(capsys, [*_common(half, [big], out), "--method", "ta"])[0] == 0  # the PEFT output is float32

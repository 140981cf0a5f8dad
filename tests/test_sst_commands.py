"""The `fisher` and `inspect` commands on a tiny model: files written, figures consistent with the library."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sst_merge.cli import main
from sst_merge.commands.inspect import subspace_overlap
from sst_merge.fisher import FisherOptions, fisher_pass
from sst_merge.fisher_file import load_factors
from sst_merge.lora import load_adapter
from sst_merge.models import load_model

pytest_plugins = ["sst_fixtures"]  # chat_base, chat_adapters, chat_data


def test_fisher_command_writes_the_factors_and_fills_the_cache(chat_base: Path, chat_adapters: list[Path],
                                                               chat_data: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "f.safetensors"
    argv = ["fisher", "--base", str(chat_base), "--adapter", str(chat_adapters[0]), "--adapter", str(chat_adapters[2]),
            "--data", str(chat_data["u0"]), "--max-examples", "5", "--output", str(out),
            "--cache-dir", str(tmp_path / "cache")]
    assert main(argv) == 0
    factors, bases, meta = load_factors(out)
    assert meta["world_size"] == 1 and len(list((tmp_path / "cache").glob("fisher-*"))) == 1
    model, tokenizer = load_model(chat_base, dtype="float32")
    name = "model.layers.1.self_attn.v_proj"
    # by default at base + task arithmetic: every adapted module moved by the adapters' summed ΔW
    summed: dict[str, torch.Tensor] = {}
    for adapter in (chat_adapters[0], chat_adapters[2]):
        for m, f in load_adapter(adapter).modules.items():
            summed[m] = summed.get(m, torch.zeros(f.shape)) + f.delta()
    ta = {m: (delta, torch.eye(delta.shape[1])) for m, delta in summed.items()}
    direct = fisher_pass(model, tokenizer, {name: bases[name]}, chat_data["u0"], FisherOptions(max_examples=5), ta)
    assert float((direct[name].G - factors[name].G).norm() / direct[name].G.norm()) < 1e-6
    at_base = fisher_pass(model, tokenizer, {name: bases[name]}, chat_data["u0"], FisherOptions(max_examples=5))
    assert float((at_base[name].G - factors[name].G).norm() / at_base[name].G.norm()) > 1e-3


def test_inspect_writes_json_and_png(chat_base: Path, chat_adapters: list[Path], chat_data: dict[str, Path],
                                     tmp_path: Path) -> None:
    argv = ["inspect", "--base", str(chat_base), "--safety-adapter", str(chat_adapters[3]),
            "--safety-data", str(chat_data["safety"]), "--utility-data", str(chat_data["u0"]),
            "--fisher-max-examples", "6", "--beta", "2.5", "--output", str(tmp_path / "insp")]
    for a in chat_adapters[:3]:
        argv += ["--adapter", str(a)]
    assert main(argv) == 0
    report = json.loads((tmp_path / "insp" / "inspect.json").read_text())
    assert (tmp_path / "insp" / "inspect.png").stat().st_size > 1000
    summary = report["summary"]
    assert summary["beta"] == 2.5
    assert 0 < summary["safety_energy_kept_share"] < 1
    assert abs(summary["safety_energy_kept_share"] + summary["safety_energy_removed_share"] - 1) < 1e-12
    # the filter costs safety energy faster than utility energy (it targets high-λ directions)
    assert summary["utility_energy_kept_share"] > summary["safety_energy_kept_share"]
    assert 0 < summary["utility_energy_lost_share"] < 1
    spectrum = summary["energy_spectrum"]
    for share in ("utility_share", "safety_share"):
        assert sum(b[share] for b in spectrum) == pytest.approx(1.0)
    # safety energy λc² sits at larger λ than utility energy c²: its mean bin is higher
    mean_bin = {share: sum(i * b[share] for i, b in enumerate(spectrum)) for share in ("utility_share", "safety_share")}
    assert mean_bin["safety_share"] >= mean_bin["utility_share"]
    module = report["modules"]["model.layers.1.mlp.down_proj"]
    assert module["overlaps"]["column"][0][0] == 1.0 or abs(module["overlaps"]["column"][0][0] - 1) < 1e-9
    assert module["overlaps"]["column"][2][1] is not None and module["overlaps"]["column"][0][2] is not None
    assert report["modules"]["model.layers.0.mlp.down_proj"]["overlaps"]["column"][0][2] is None


def test_subspace_overlap_bounds() -> None:
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(20, 3, generator=gen)
    assert abs(subspace_overlap(X, X @ torch.randn(3, 2, generator=gen)) - 1) < 1e-9
    e = torch.eye(20)
    assert subspace_overlap(e[:, :3], e[:, 3:6]) == 0.0


@pytest.mark.parametrize(("flags", "problem"), [
    (["--weights", "abc"], "--weights 'abc': 0: Input should be a valid number"),
    (["--weights", "1,nan"], "--weights '1,nan': 1: Input should be a finite number"),
    (["--max-examples", "0"], "--max-examples must be at least 1, got 0"),
    (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    (["--max-length", "1"], "--max-length must be at least 2, got 1"),
])
def test_fisher_bad_flags(chat_base: Path, chat_adapters: list[Path], chat_data: dict[str, Path], tmp_path: Path,
                          capsys: pytest.CaptureFixture, flags: list[str], problem: str) -> None:
    out = tmp_path / "f.safetensors"
    argv = ["fisher", "--base", str(chat_base), "--adapter", str(chat_adapters[0]), "--data", str(chat_data["u0"]),
            "--output", str(out), *flags]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and problem in err
    assert list(tmp_path.iterdir()) == []


def test_fisher_keeps_an_existing_output_without_force(chat_base: Path, chat_adapters: list[Path],
                                                       chat_data: dict[str, Path], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "f.safetensors"
    out.write_text("precious")
    argv = ["fisher", "--base", str(chat_base), "--adapter", str(chat_adapters[0]), "--data", str(chat_data["u0"]),
            "--max-examples", "3", "--output", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{out}: output already exists (pass --force" in err
    assert out.read_text() == "precious"
    assert main([*argv, "--force"]) == 0
    assert load_factors(out)[0] and sorted(p.name for p in tmp_path.iterdir()) == ["f.safetensors"]

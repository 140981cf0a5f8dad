"""SST-Merge end to end on a tiny model: β = 0 is TA, the filter is the dense closed form, sweeps, CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sst_merge.cli import main
from sst_merge.errors import InputError
from sst_merge.fisher_file import load_factors
from sst_merge.lora import load_adapter
from sst_merge.merge import build_merge_config, load_inputs, merge_adapters, merge_sweep

pytest_plugins = ["sst_fixtures"]  # chat_base, chat_adapters, chat_data


def deltas(path: Path) -> dict[str, torch.Tensor]:
    return {name: f.delta() for name, f in load_adapter(path).modules.items()}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / max(float(b.norm()), 1e-30))


def sst_config(base: Path, adapters: list[Path], data: dict[str, Path], out: Path, **params) -> dict:
    return dict(base=base, adapters=adapters[:3], method="sst", output=out, safety_data=data["safety"],
                utility_data=[data["u0"], data["u1"], data["u0"]], safety_adapter=adapters[3],
                fisher_max_examples=8, cache_dir=out.parent / "cache", **params)


def test_beta_zero_equals_ta(chat_base: Path, chat_adapters: list[Path], chat_data: dict[str, Path],
                             tmp_path: Path) -> None:
    merge_adapters(build_merge_config(sst_config(chat_base, chat_adapters, chat_data, tmp_path / "sst", beta=0.0)))
    merge_adapters(build_merge_config(dict(base=chat_base, adapters=chat_adapters[:3], method="ta",
                                           output=tmp_path / "ta")))
    sst, ta = deltas(tmp_path / "sst"), deltas(tmp_path / "ta")
    assert set(sst) == set(ta)
    for name in ta:
        assert rel(sst[name], ta[name]) < 1e-5, name


def dense_expected(loaded, context, name: str, beta: float, safety: dict) -> torch.Tensor:
    """U [(F_u+βF_s)⁻¹(F_u δ_u + βF_s δ_s)] Vᵀ with dense (pq)×(pq) Kronecker products."""
    ctx = context.modules[name]
    sub, eig = ctx.subspace, ctx.eig
    p, q = sub.p, sub.q
    F_u = np.kron(eig.M_A.numpy(), eig.M_G.numpy())
    F_s = np.kron(safety[name].A.numpy(), safety[name].G.numpy())
    experts = [a.modules.get(name) for a in loaded.job.adapters]
    d_u = sum(w * (sub.U.T.double() @ f.delta().double() @ sub.V.double())
              for w, f in zip(loaded.job.weights, experts, strict=True) if f is not None)
    safety_factors = load_adapter(loaded.params.safety_adapter).modules.get(name)
    d_s = torch.zeros(p, q, dtype=torch.float64) if safety_factors is None else (
        sub.U.T.double() @ safety_factors.delta().double() @ sub.V.double())
    rhs = F_u @ d_u.numpy().reshape(-1, order="F") + beta * F_s @ d_s.numpy().reshape(-1, order="F")
    core = np.linalg.solve(F_u + beta * F_s, rhs).reshape(p, q, order="F")
    return sub.U.double() @ torch.from_numpy(core) @ sub.V.T.double()


def test_filter_and_injection_equal_dense_closed_form(chat_base: Path, chat_adapters: list[Path],
                                                      chat_data: dict[str, Path], tmp_path: Path) -> None:
    """Mixed ranks, an adapter on a few modules of one layer, a safety adapter on other modules."""
    beta = 3.0
    config = build_merge_config(sst_config(chat_base, chat_adapters, chat_data, tmp_path / "sst", beta=beta))
    loaded = load_inputs(config)
    context = loaded.method.prepare(loaded.job, loaded.params)
    merge_adapters(config, loaded, context)
    merged = deltas(tmp_path / "sst")
    files = sorted((tmp_path / "cache").glob("fisher-*.safetensors"))
    safety = next(f for f, _, meta in map(load_factors, files) if meta["data"] == str(chat_data["safety"]))
    partial = "model.layers.0.self_attn.o_proj"  # adapted by experts 0, 1 and the safety adapter, not expert 2
    for name in ["model.layers.1.self_attn.q_proj", "model.layers.0.mlp.down_proj", partial]:
        expected = dense_expected(loaded, context, name, beta, safety)
        assert rel(merged[name].double(), expected) < 1e-4, name
    # the filter really moved something: SST differs from plain TA + safety
    assert rel(merged[partial], sum(f.delta() for a in chat_adapters if (f := load_adapter(a).modules.get(partial))))\
        > 1e-3


def test_hard_top_all_removes_utility_and_injects_safety(chat_base: Path, chat_adapters: list[Path],
                                                          chat_data: dict[str, Path], tmp_path: Path) -> None:
    """ρ = 1 zeroes every utility coefficient and injects the whole safety core: ΔW* = ΔW_s (0 where absent)."""
    merge_adapters(build_merge_config(sst_config(chat_base, chat_adapters, chat_data, tmp_path / "h", hard_top=1.0)))
    merged, safety = deltas(tmp_path / "h"), deltas(chat_adapters[3])
    for name, delta in merged.items():
        target = safety.get(name, torch.zeros_like(delta))
        assert float((delta - target).norm()) <= 1e-4 * max(1.0, float(target.norm())), name


def test_default_beta_and_sweep_reuse_one_fisher_pass(chat_base: Path, chat_adapters: list[Path],
                                                       chat_data: dict[str, Path], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import sst_merge.models

    loads = []
    original = sst_merge.models.load_model
    monkeypatch.setattr(sst_merge.models, "load_model", lambda *a, **k: loads.append(1) or original(*a, **k))
    out = tmp_path / "sweep"
    reports = merge_sweep(build_merge_config(sst_config(chat_base, chat_adapters, chat_data, out,
                                                        beta_sweep=[0.0, 10.0])))
    assert [r.output for r in reports] == [out / "beta=0", out / "beta=10"]
    assert len(loads) == 1
    assert len(list((tmp_path / "cache").glob("fisher-*.safetensors"))) == 3  # safety + two utility files
    # one round at the calibrated β reuses the cache: no model load at all
    merge_adapters(build_merge_config(sst_config(chat_base, chat_adapters, chat_data, tmp_path / "one",
                                                 fisher_rounds=1)))
    assert len(loads) == 1
    # the default rule's second round takes the safety Fisher once more, at the filtered merge
    report = merge_adapters(build_merge_config(sst_config(chat_base, chat_adapters, chat_data, tmp_path / "default")))
    assert len(loads) == 2 and len(report.resolved["rounds"]) == 2
    assert len(list((tmp_path / "cache").glob("fisher-*.safetensors"))) == 4
    for name, delta in deltas(tmp_path / "default").items():
        assert torch.isfinite(delta).all(), name


def test_cli_sweep_and_utility_count(chat_base: Path, chat_adapters: list[Path], chat_data: dict[str, Path],
                                     tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    common = ["merge", "--base", str(chat_base), "--method", "sst", "--safety-data", str(chat_data["safety"]),
              "--fisher-max-examples", "6", "--cache-dir", str(tmp_path / "c")]
    for a in chat_adapters[:2]:
        common += ["--adapter", str(a)]
    rc = main(common + ["--utility-data", str(chat_data["u0"]), "--utility-data", str(chat_data["u1"]),
                        "--beta-sweep", "0.5,2", "--output", str(tmp_path / "o")])
    assert rc == 0
    assert (tmp_path / "o" / "beta=0.5" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "o" / "beta=2" / "adapter_model.safetensors").is_file()
    with pytest.raises(InputError, match="3 utility data files for 2 adapters"):
        merge_adapters(build_merge_config(dict(
            base=chat_base, adapters=chat_adapters[:2], method="sst", output=tmp_path / "x",
            safety_data=chat_data["safety"], utility_data=[chat_data["u0"]] * 3)))


def test_diagonal_variant_is_the_elementwise_closed_form(chat_base: Path, chat_adapters: list[Path],
                                                         chat_data: dict[str, Path], tmp_path: Path) -> None:
    beta = 2.0
    config = build_merge_config(sst_config(chat_base, chat_adapters, chat_data, tmp_path / "d", beta=beta,
                                           fisher="diagonal"))
    loaded = load_inputs(config)
    context = loaded.method.prepare(loaded.job, loaded.params)
    merge_adapters(config, loaded, context)
    name = "model.layers.1.mlp.down_proj"
    ctx = context.modules[name]
    sub = ctx.subspace
    d_u = sum(c.double() for c in sub.cores[:3] if c is not None)
    d_s = sub.cores[3].double() if sub.cores[3] is not None else torch.zeros_like(d_u)
    core = (d_u + beta * ctx.lam * d_s) / (1 + beta * ctx.lam)
    assert rel(deltas(tmp_path / "d")[name].double(), sub.U.double() @ core @ sub.V.T.double()) < 1e-4


@pytest.fixture
def no_model_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading a model fails the test: bad input must be found before."""
    import sst_merge.models

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(sst_merge.models, "load_model", refuse)


def _sst_argv(base: Path, adapters: list[Path], data: dict[str, Path], out: Path, *extra: str) -> list[str]:
    argv = ["merge", "--base", str(base), "--method", "sst", "--safety-data", str(data["safety"]),
            "--utility-data", str(data["u0"]), "--fisher-max-examples", "6", "--output", str(out), *extra]
    for a in adapters[:2]:
        argv += ["--adapter", str(a)]
    return argv


def test_sweep_is_validated_before_anything_is_written(chat_base: Path, chat_adapters: list[Path],
                                                       chat_data: dict[str, Path], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture, no_model_load: None) -> None:
    """`--beta-sweep 1,-5` used to write beta=1/ before refusing -5."""
    out = tmp_path / "sweep"
    assert main(_sst_argv(chat_base, chat_adapters, chat_data, out, "--beta-sweep", "1,-5")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "beta" in err and "greater than or equal to 0" in err
    assert list(tmp_path.iterdir()) == []


def test_sweep_that_fails_midway_leaves_no_output(chat_base: Path, chat_adapters: list[Path],
                                                  chat_data: dict[str, Path], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The sweep is one output: a failure at its second value leaves neither value behind."""
    import sst_merge.merge as merge_module

    calls = []
    write = merge_module._write_peft

    def fail_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise InputError("disk trouble")
        return write(*args, **kwargs)

    monkeypatch.setattr(merge_module, "_write_peft", fail_second)
    out = tmp_path / "sweep"
    with pytest.raises(InputError, match="disk trouble"):
        merge_sweep(build_merge_config(sst_config(chat_base, chat_adapters, chat_data, out, beta_sweep=[0.0, 1.0])))
    assert len(calls) == 2 and not out.exists() and not list(tmp_path.glob(".sweep*"))


@pytest.mark.parametrize(("line", "problem"), [
    ('{"prompt": "w1 w2"}', "line 2 needs string field(s) 'response'"),
    ("not json", "line 2 is not JSON"),
])
def test_bad_data_line_is_found_before_the_model_loads(chat_base: Path, chat_adapters: list[Path],
                                                       chat_data: dict[str, Path], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture, no_model_load: None,
                                                       line: str, problem: str) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(chat_data["u1"].read_text().splitlines()[0] + "\n" + line + "\n")
    out = tmp_path / "out"
    data = {**chat_data, "u0": bad}
    assert main(_sst_argv(chat_base, chat_adapters, data, out, "--beta", "1")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{bad}: {problem}" in err
    assert not out.exists()


def test_rounds_default_to_the_rule_that_calibrates_beta(tmp_path: Path) -> None:
    """2 rounds where β is calibrated by the share (the default rule); one where β comes otherwise (a fixed
    β does not carry across rounds); an explicit count is kept."""
    from sst_merge.methods.sst import DEFAULT_FISHER_ROUNDS, SSTParams

    data = {"safety_data": tmp_path / "s.jsonl", "utility_data": [tmp_path / "u.jsonl"]}
    assert DEFAULT_FISHER_ROUNDS == 2
    assert SSTParams(**data).fisher_rounds == 2
    assert SSTParams(**data, safety_share=0.99).fisher_rounds == 2
    for other in ({"beta": 3.0}, {"beta_sweep": [1.0, 2.0]}, {"hard_top": 0.1}, {"safety_budget": 0.1},
                  {"first_order": True}):
        assert SSTParams(**data, **other).fisher_rounds == 1, other
    assert SSTParams(**data, beta=3.0, fisher_rounds=3).fisher_rounds == 3
    assert SSTParams(**data, fisher_rounds=None).fisher_rounds == 2

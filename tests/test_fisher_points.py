"""SST and AGL through the real Fisher pass at every Fisher point: the base, base + task arithmetic, and the
second round at base + the first round's filtered merge. Each expected merge is rebuilt in the test: the
factors by a Fisher pass at a point built here from dense ΔW (the adapters' sum, or the first round's
written output), the filter by a dense solve on Kronecker products."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sst_merge.fisher import FisherOptions, fisher_pass
from sst_merge.lora import load_adapter
from sst_merge.merge import PROVENANCE_NAME, build_merge_config, load_inputs, merge_adapters, prepare
from sst_merge.models import load_model

pytest_plugins = ["sst_fixtures"]  # chat_base, chat_adapters, chat_data

EXAMPLES, GAMMA, BETA = 8, 0.01, 3.0
CHECKED = ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj", "model.layers.0.self_attn.o_proj"]


def tvec(M: torch.Tensor) -> torch.Tensor:
    """Column-major vec: vec(G C Aᵀ) = (A ⊗ G) vec(C)."""
    return M.T.reshape(-1)


def tunvec(v: torch.Tensor, p: int, q: int) -> torch.Tensor:
    return v.reshape(q, p).T


def deltas(path: Path) -> dict[str, torch.Tensor]:
    return {name: f.delta().double() for name, f in load_adapter(path).modules.items()}


def summed(paths: list[Path]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for path in paths:
        for name, delta in deltas(path).items():
            out[name] = out.get(name, torch.zeros_like(delta)) + delta
    return out


def factors_at(base: Path, bases: dict, data: Path, point: dict[str, torch.Tensor] | None) -> dict:
    """A Fisher pass at base + the dense ΔW of `point` (as (ΔW, I) updates)."""
    model, tokenizer = load_model(base, dtype="float32")
    updates = {n: (d.float(), torch.eye(d.shape[1])) for n, d in point.items()} if point else None
    return fisher_pass(model, tokenizer, bases, data, FisherOptions(max_examples=EXAMPLES), updates)


def damped(M: torch.Tensor) -> torch.Tensor:
    return M + GAMMA * torch.trace(M) / M.shape[0] * torch.eye(M.shape[0], dtype=torch.float64)


def core_of(sub, delta: torch.Tensor) -> torch.Tensor:
    return sub.U.T.double() @ delta.double() @ sub.V.double()


def config(kind: str, base: Path, adapters: list[Path], data: dict[str, Path], out: Path, **params) -> dict:
    common = dict(base=base, adapters=adapters[:3], method=kind, output=out, safety_data=data["safety"],
                  fisher_max_examples=EXAMPLES, cache_dir=out.parent / "cache", **params)
    return {**common, "utility_data": [data["u0"]]} if kind == "sst" else common


def run(values: dict):
    cfg = build_merge_config(values)
    loaded = load_inputs(cfg)
    prepared = prepare(loaded)
    report = merge_adapters(cfg, loaded, prepared)
    return prepared, report


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("point", ["base", "ta", "round 2"])
def test_sst_at_every_fisher_point(chat_base: Path, chat_adapters: list[Path], chat_data: dict[str, Path],
                                   tmp_path: Path, point: str, first_order: bool) -> None:
    """δ' = (F_u + βF_s)⁻¹(F_u δ_u − βg + βF_s a + βF_s δ_s): g = 0 and a = 0 without the first-order term;
    with it, g and F_s are taken at a (0 at the base, δ_u at TA, the round-1 merge in round 2). The
    safety adapter (δ_s) joins the filter-only runs; the first-order runs go without it, so that the
    round-1 output is the anchor a itself."""
    safety_adapter = {} if first_order else {"safety_adapter": chat_adapters[3]}
    at, rounds = ("base", 1) if point == "base" else ("ta", 2 if point == "round 2" else 1)
    common = dict(beta=BETA, first_order=first_order, fisher_at=at, **safety_adapter)
    prepared, report = run(config("sst", chat_base, chat_adapters, chat_data, tmp_path / "out",
                                  fisher_rounds=rounds, **common))
    merged = deltas(tmp_path / "out")
    ta = summed(chat_adapters[:3])
    if point == "round 2":
        run(config("sst", chat_base, chat_adapters, chat_data, tmp_path / "round1", **common))
        safety_point = deltas(tmp_path / "round1")
    else:
        safety_point = ta if point == "ta" else None
    bases = {n: (prepared.modules[n].subspace.U, prepared.modules[n].subspace.V) for n in CHECKED}
    safety = factors_at(chat_base, bases, chat_data["safety"], safety_point)
    utility = factors_at(chat_base, bases, chat_data["u0"], ta if at == "ta" else None)
    for name in CHECKED:
        sub = prepared.modules[name].subspace
        p, q = sub.p, sub.q
        F_u = torch.kron(damped(utility[name].A), damped(utility[name].G))
        F_s = torch.kron(safety[name].A, safety[name].G)
        rhs = F_u @ tvec(core_of(sub, ta[name]))
        if not first_order and name in deltas(chat_adapters[3]):
            rhs = rhs + BETA * F_s @ tvec(core_of(sub, deltas(chat_adapters[3])[name]))
        if first_order:
            anchor = core_of(sub, safety_point[name]) if safety_point else torch.zeros(p, q, dtype=torch.float64)
            rhs = rhs - BETA * tvec(safety[name].grad) + BETA * F_s @ tvec(anchor)
        expected = tunvec(torch.linalg.solve(F_u + BETA * F_s, rhs), p, q)
        ours = core_of(sub, merged[name])
        # The round-2 point reaches the weights through different float32 factors here and in the method
        # (1e-7 apart), which moves the small safety gradient there by ~3e-4 and the result by up to 5e-3
        # on this fixture; a wrong gradient, anchor or Fisher point is off by 0.5 to 1.4 (measured).
        tolerance = 1e-2 if first_order and point == "round 2" else 1e-4
        assert float((ours - expected).norm() / expected.norm()) < tolerance, name
    # the record: where each round's Fisher was taken and the safety loss there
    assert [r["point"] for r in report.resolved["rounds"]] == ([point] if rounds == 1 else ["ta", "round 2"])
    assert report.resolved["rounds"][-1]["safety_nll"] == pytest.approx(safety[CHECKED[0]].nll, rel=1e-6)
    assert report.resolved["beta"] == BETA and report.resolved["beta_source"] == "given"


@pytest.mark.parametrize("point", ["base", "ta", "round 2"])
def test_agl_at_every_fisher_point(chat_base: Path, chat_adapters: list[Path], chat_data: dict[str, Path],
                                   tmp_path: Path, point: str) -> None:
    """ΔW* = U [(I − P_k) vec(δ_TA)] Vᵀ, P_k the projector on the top-k eigenvectors of the dense Ā_s ⊗ Ḡ_s
    taken at the point."""
    k = 3
    at, rounds = ("base", 1) if point == "base" else ("ta", 2 if point == "round 2" else 1)
    prepared, report = run(config("agl", chat_base, chat_adapters, chat_data, tmp_path / "out", top_k=k,
                                  fisher_at=at, fisher_rounds=rounds))
    merged = deltas(tmp_path / "out")
    ta = summed(chat_adapters[:3])
    if point == "round 2":
        run(config("agl", chat_base, chat_adapters, chat_data, tmp_path / "round1", top_k=k, fisher_at="ta"))
        safety_point = deltas(tmp_path / "round1")
    else:
        safety_point = ta if point == "ta" else None
    bases = {n: (prepared.modules[n].subspace.U, prepared.modules[n].subspace.V) for n in CHECKED}
    safety = factors_at(chat_base, bases, chat_data["safety"], safety_point)
    removed = 0
    for name in CHECKED:
        sub = prepared.modules[name].subspace
        w, X = torch.linalg.eigh(torch.kron(safety[name].A, safety[name].G))
        top = X[:, torch.argsort(w, descending=True)[:k]]
        v = tvec(core_of(sub, ta[name]))
        expected = tunvec(v - top @ (top.T @ v), sub.p, sub.q)
        assert float((core_of(sub, merged[name]) - expected).norm() / expected.norm()) < 1e-4, name
        removed += k
    assert report.resolved["critical_directions"] >= removed and report.resolved["top_k"] == k
    assert [r["point"] for r in report.resolved["rounds"]] == ([point] if rounds == 1 else ["ta", "round 2"])


def test_rounds_are_cached_and_the_calibrated_beta_is_recorded(chat_base: Path, chat_adapters: list[Path],
                                                               chat_data: dict[str, Path], tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Two rounds: three factor files (safety and utility at TA, safety at round 2); a rerun loads no model.
    The calibrated β is in the report, the provenance and the printout, and merging with that number
    given reproduces the merge."""
    import sst_merge.models

    values = config("sst", chat_base, chat_adapters, chat_data, tmp_path / "cal", fisher_rounds=2,
                    safety_adapter=chat_adapters[3])
    _, report = run(values)
    assert len(list((tmp_path / "cache").glob("fisher-*.safetensors"))) == 3
    beta = report.resolved["beta"]
    assert isinstance(beta, float) and beta > 0 and report.resolved["beta_source"].startswith("calibrated")
    assert [r["point"] for r in report.resolved["rounds"]] == ["ta", "round 2"]
    assert all("beta" in r for r in report.resolved["rounds"])
    assert 0 < report.resolved["safety_energy_removed"] < 1
    record = json.loads((tmp_path / "cal" / PROVENANCE_NAME).read_text())
    assert record["params"]["beta"] is None and record["resolved"]["beta"] == beta

    loads = []
    monkeypatch.setattr(sst_merge.models, "load_model", lambda *a, **k: loads.append(1))
    _, again = run({**values, "output": tmp_path / "again"})
    assert loads == [] and again.resolved["beta"] == beta
    _, given = run({**values, "output": tmp_path / "given", "beta": beta, "fisher_rounds": 1})
    # one round with the same β differs from two: the second round's Fisher changed the filter
    one, two = deltas(tmp_path / "given"), deltas(tmp_path / "cal")
    assert any(float((one[n] - two[n]).norm()) > 1e-4 * float(two[n].norm()) for n in two)


def test_calibrated_beta_reproduces_the_merge(chat_base: Path, chat_adapters: list[Path],
                                              chat_data: dict[str, Path], tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    from sst_merge.cli import main

    argv = ["merge", "--base", str(chat_base), "--method", "sst", "--safety-data", str(chat_data["safety"]),
            "--utility-data", str(chat_data["u0"]), "--fisher-max-examples", str(EXAMPLES),
            "--cache-dir", str(tmp_path / "cache")]
    for a in chat_adapters[:2]:
        argv += ["--adapter", str(a)]
    assert main(argv + ["--output", str(tmp_path / "cal")]) == 0
    beta = json.loads((tmp_path / "cal" / PROVENANCE_NAME).read_text())["resolved"]["beta"]
    assert f"beta={beta:.4g}" in capsys.readouterr().out.replace("\n", "").replace("│", "").replace(" ", "")
    assert main(argv + ["--beta", repr(beta), "--output", str(tmp_path / "given")]) == 0
    cal, given = deltas(tmp_path / "cal"), deltas(tmp_path / "given")
    for name in cal:
        assert torch.allclose(cal[name], given[name], rtol=1e-6, atol=1e-9), name


@pytest.mark.parametrize(("extra", "problem"), [
    ({"first_order": True, "hard_top": 0.1}, "first_order needs the soft filter"),
    ({"first_order": True, "fisher_kind": "true"}, "first_order needs fisher_kind empirical"),
    ({"fisher_rounds": 2, "beta_sweep": [1.0, 2.0]}, "give beta, not beta_sweep"),
])
def test_incompatible_options_are_input_errors(chat_base: Path, chat_adapters: list[Path],
                                               chat_data: dict[str, Path], tmp_path: Path, extra: dict,
                                               problem: str) -> None:
    from sst_merge.errors import InputError

    with pytest.raises(InputError, match=problem):
        build_merge_config(config("sst", chat_base, chat_adapters, chat_data, tmp_path / "x", **extra))

"""Safe LoRA and SafeMERGE against a dense brute-force reference written here after github.com/IBM/SafeLoRA
(model.py) and github.com/aladinD/SafeMERGE (utils.py): C = V Vᵀ/‖V‖_F from whole weight matrices,
cos of the flattened C ΔW and ΔW, the threshold and "number" rules; and bad input before any weight is read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from factories import make_tiny_llama
from sst_merge.cli import main
from sst_merge.errors import InputError
from sst_merge.lora import load_adapter
from sst_merge.merge import PROVENANCE_NAME, build_merge_config, merge_adapters

pytest_plugins = ["sst_fixtures"]  # chat_base, chat_adapters

WEIGHTS = [1.0, 0.5, 2.0]
# Modules alignment changed (rank-2 V); every other module has V = 0 and is never treated.
ALIGNED = ["self_attn.q_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.down_proj", "mlp.up_proj"]


@pytest.fixture(scope="module")
def original(chat_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 'unaligned original': the base minus a random rank-2 V on the ALIGNED modules of both layers."""
    model = AutoModelForCausalLM.from_pretrained(chat_base, dtype=torch.float32)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, module in model.named_modules():
            if any(name.endswith(suffix) for suffix in ALIGNED):
                d_out, d_in = module.weight.shape
                module.weight -= torch.randn(d_out, 2, generator=gen) @ torch.randn(2, d_in, generator=gen) * 0.3
    out = tmp_path_factory.mktemp("original") / "original"
    model.save_pretrained(out)
    return out


def weights_of(path: Path) -> dict[str, torch.Tensor]:
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return {n: m.weight.detach().double() for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def reference_cosines(base: Path, original: Path, updates: dict[str, list[torch.Tensor]]):
    """{module: [(C ΔW, cos) per update]} by the references' dense formulas (None where V = 0)."""
    W_b, W_o = weights_of(base), weights_of(original)
    out = {}
    for name, deltas in updates.items():
        V = W_b[name] - W_o[name]
        if float(V.norm()) == 0.0:
            out[name] = [(None, None) for _ in deltas]
            continue
        C = V @ V.T / torch.norm(V)
        out[name] = [(C @ d, float(torch.nn.functional.cosine_similarity((C @ d).reshape(1, -1), d.reshape(1, -1))))
                     for d in deltas]
    return out


def expert_updates(adapters: list[Path]) -> dict[str, list[tuple[int, torch.Tensor]]]:
    """{module: [(expert k, w_k ΔW_k)]} over the experts that adapt the module."""
    out: dict[str, list[tuple[int, torch.Tensor]]] = {}
    for k, (w, path) in enumerate(zip(WEIGHTS, adapters, strict=True)):
        for name, f in load_adapter(path).modules.items():
            out.setdefault(name, []).append((k, w * f.delta().double()))
    return out


def between(cosines) -> float:
    """A τ halfway between the two middle cosines: some updates below, some above, none at τ."""
    values = sorted(cosines)
    return (values[len(values) // 2 - 1] + values[len(values) // 2]) / 2


def merged(path: Path) -> dict[str, torch.Tensor]:
    return {name: f.delta().double() for name, f in load_adapter(path).modules.items()}


def run(base: Path, adapters: list[Path], out: Path, **params):
    return merge_adapters(build_merge_config(dict(base=base, adapters=adapters, weights=WEIGHTS, output=out,
                                                  **params)))


@pytest.mark.parametrize("rule", ["threshold", "number"])
def test_safe_lora_per_expert_equals_the_dense_reference(chat_base: Path, chat_adapters: list[Path],
                                                         original: Path, tmp_path: Path, rule: str) -> None:
    adapters = chat_adapters[:3]
    updates = expert_updates(adapters)
    ref = reference_cosines(chat_base, original, {n: [d for _, d in u] for n, u in updates.items()})
    tau = between(c for items in ref.values() for _, c in items if c is not None)
    count = 2
    params = {"threshold": tau} if rule == "threshold" else {"num_proj_layers": count}
    report = run(chat_base, adapters, tmp_path / "out", method="safe_lora", original=original, **params)
    cuts = {}
    for k in range(3):  # the reference's "number" rule: the count-th lowest cosine of each expert's modules
        own = sorted(c for n, u in updates.items() for (e, _), (_, c) in zip(u, ref[n], strict=True)
                     if e == k and c is not None)
        cuts[k] = own[:count][-1]
    ours = merged(tmp_path / "out")
    projected = 0
    for name, items in updates.items():
        expected = torch.zeros_like(items[0][1])
        for (k, delta), (image, cos) in zip(items, ref[name], strict=True):
            limit = tau if rule == "threshold" else cuts[k]
            if cos is not None and cos <= limit:
                expected += image
                projected += 1
            else:
                expected += delta
        assert float((ours[name] - expected).norm() / expected.norm()) < 1e-5, name
    assert 0 < projected < sum(len(u) for u in updates.values())
    assert sum(report.resolved["treated"]) == projected
    if rule == "number":
        assert report.resolved["treated"] == [count] * 3
    record = json.loads((tmp_path / "out" / PROVENANCE_NAME).read_text())
    assert record["resolved"]["treated"] == report.resolved["treated"]


def test_safe_lora_on_the_merge_and_safemerge(chat_base: Path, chat_adapters: list[Path], original: Path,
                                              tmp_path: Path) -> None:
    """apply_to merge: the task-arithmetic ΔW is the one update; SafeMERGE mixes the safety adapter (a = 0.2)
    into the modules with cos < τ and leaves the rest, and those the safety adapter lacks, as TA."""
    adapters, safety_path = chat_adapters[:3], chat_adapters[3]
    ta = {n: sum(d for _, d in u) for n, u in expert_updates(adapters).items()}
    ref = reference_cosines(chat_base, original, {n: [d] for n, d in ta.items()})
    tau = between(c for items in ref.values() for _, c in items if c is not None)
    run(chat_base, adapters, tmp_path / "sl", method="safe_lora", original=original, threshold=tau, apply_to="merge")
    report = run(chat_base, adapters, tmp_path / "sm", method="safemerge", original=original, threshold=tau,
                 safety_adapter=safety_path)
    safety = merged(safety_path)
    ours_sl, ours_sm = merged(tmp_path / "sl"), merged(tmp_path / "sm")
    mixed = 0
    for name, delta in ta.items():
        image, cos = ref[name][0]
        expected = image if cos is not None and cos <= tau else delta
        assert float((ours_sl[name] - expected).norm() / expected.norm()) < 1e-5, name
        if cos is not None and cos < tau and name in safety:
            expected = 0.8 * delta + 0.2 * safety[name]
            mixed += 1
        else:
            expected = delta
        assert float((ours_sm[name] - expected).norm() / expected.norm()) < 1e-5, name
    assert mixed > 0 and report.resolved["treated"][0] >= mixed


def test_bad_input_is_one_line_before_any_weight_is_read(chat_base: Path, chat_adapters: list[Path],
                                                         original: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import sst_merge.methods.safe_lora as safe_lora

    monkeypatch.setattr(safe_lora, "read_weight", lambda *a: pytest.fail("a weight was read before the check"))
    argv = ["merge", "--base", str(chat_base), "--adapter", str(chat_adapters[0]), "--method", "safe_lora"]
    assert main(argv + ["--output", str(tmp_path / "a")]) == 2
    assert "original" in capsys.readouterr().err
    # an original of another width: every weight's shape differs
    other = make_tiny_llama(tmp_path / "other", hidden_size=32)
    capsys.readouterr()  # the save's progress bar
    assert main(argv + ["--original", str(other), "--output", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "has shape" in err and str(other) in err
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no model.safetensors"):
        run(chat_base, chat_adapters[:3], tmp_path / "c", method="safe_lora", original=tmp_path / "empty")
    with pytest.raises(InputError, match="original: Path does not point to a directory"):
        run(chat_base, chat_adapters[:3], tmp_path / "d", method="safe_lora", original=tmp_path / "missing")
    assert not any((tmp_path / x).exists() for x in "abcd")

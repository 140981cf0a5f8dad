"""K-FAC factors against a brute-force per-token accumulation, true Fisher, cache and factor files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from sst_merge.chat_data import read_chat_jsonl
from sst_merge.fisher import FisherOptions, KFACFactors, applied_updates, fisher_pass
from sst_merge.fisher_cache import cached_factors
from sst_merge.fisher_file import load_factors, save_factors

pytest_plugins = ["sst_fixtures"]  # chat_base, chat_adapters, chat_data

MODULES = ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj", "model.layers.1.mlp.down_proj"]


def orthonormal(n: int, k: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, k, generator=torch.Generator().manual_seed(seed)))
    return q


def random_bases(model: torch.nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    modules = dict(model.named_modules())
    return {
        name: (orthonormal(modules[name].out_features, 3, i), orthonormal(modules[name].in_features, 2, 10 + i))
        for i, name in enumerate(MODULES)
    }


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ (the factors' scale varies by orders of magnitude between modules)."""
    return float((a - b).norm() / b.norm())


def load(base: Path) -> tuple[torch.nn.Module, object]:
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(base)


def brute_force(model, tokenizer, rows, bases) -> dict[str, KFACFactors]:
    """One example at a time, no padding: capture each module's input x_t and output gradient g_t per token
    with retain_grad, and accumulate Σ (Vᵀx)(Vᵀx)ᵀ, Σ (Uᵀg)(Uᵀg)ᵀ and the per-token diagonal in a loop."""
    modules = dict(model.named_modules())
    sums = {name: KFACFactors.zeros(U.shape[1], V.shape[1]) for name, (U, V) in bases.items()}
    for row in rows:
        prompt = f"<user>{row['prompt']}<assistant>"
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        r = tokenizer(row["response"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = torch.tensor([p + r])
        captured = {}
        handles = [
            modules[name].register_forward_hook(
                lambda _m, i, o, name=name, store=captured: store.__setitem__(name, (i[0], o))
            )
            for name in bases
        ]
        for name in bases:
            modules[name].weight.grad = None
        logits = model(input_ids=ids).logits[0]
        for _, out in captured.values():
            out.retain_grad()
        loss = sum(-logits[t - 1].log_softmax(-1)[ids[0, t]] for t in range(len(p), ids.shape[1]))
        loss.backward()
        for name in bases:
            sums[name].loss_sum += float(loss.detach())
            sums[name].labels += ids.shape[1] - len(p)
        for handle in handles:
            handle.remove()
        for name, (U, V) in bases.items():
            x, out = captured[name]
            x = x.detach()
            weight_grad = torch.zeros_like(modules[name].weight)
            for t in range(ids.shape[1]):
                xt, gt = V.T.double() @ x[0, t].double(), U.T.double() @ out.grad[0, t].double()
                sums[name].A_sum += torch.outer(xt, xt)
                sums[name].G_sum += torch.outer(gt, gt)
                sums[name].diag_sum += torch.outer(gt * gt, xt * xt)
                sums[name].tokens += 1
                weight_grad += torch.outer(out.grad[0, t], x[0, t])
            # the captured per-token gradients really are those of the weight
            assert rel_diff(weight_grad, modules[name].weight.grad) < 1e-5
            # the core's gradient from autograd's weight gradient, not from the per-token products
            sums[name].grad_sum += U.T.double() @ modules[name].weight.grad.double() @ V.double()
    return sums


def test_kfac_factors_equal_brute_force(chat_base: Path, chat_data: dict[str, Path]) -> None:
    model, tokenizer = load(chat_base)
    bases = random_bases(model)
    rows = read_chat_jsonl(chat_data["safety"])[:7]
    expected = brute_force(model, tokenizer, rows, bases)
    model.zero_grad(set_to_none=True)
    factors = fisher_pass(model, tokenizer, bases, chat_data["safety"], FisherOptions(max_examples=7, batch_size=3))
    for name in MODULES:
        assert factors[name].tokens == expected[name].tokens
        assert factors[name].labels == expected[name].labels
        assert factors[name].nll == pytest.approx(expected[name].nll, rel=1e-5)
        for what in ("A", "G", "diag", "grad"):
            ours, ref = getattr(factors[name], what), getattr(expected[name], what)
            assert rel_diff(ours, ref) < 1e-5, (name, what)
    # no parameter gradient is computed, and the parameters' flags are restored
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


def test_true_fisher_is_seeded_and_batch_independent(chat_base: Path, chat_data: dict[str, Path]) -> None:
    model, tokenizer = load(chat_base)
    bases = random_bases(model)
    run = lambda **kw: fisher_pass(model, tokenizer, bases, chat_data["u0"], FisherOptions(max_examples=6, **kw))  # noqa: E731
    one, many = run(kind="true", batch_size=1), run(kind="true", batch_size=6)
    empirical = run(kind="empirical", batch_size=6)
    for name in MODULES:
        assert rel_diff(one[name].G, many[name].G) < 1e-6
        assert rel_diff(one[name].G, empirical[name].G) > 1e-2
        # Ā depends on the inputs only, not on the labels
        assert rel_diff(one[name].A, empirical[name].A) < 1e-6


def test_applied_deltas_change_and_restore(chat_base: Path, chat_data: dict[str, Path]) -> None:
    model, tokenizer = load(chat_base)
    bases = random_bases(model)
    name = MODULES[2]
    weight = dict(model.named_modules())[name].weight
    before = weight.detach().clone()
    gen = torch.Generator().manual_seed(0)
    update = {name: (torch.randn(weight.shape[0], 3, generator=gen), torch.randn(3, weight.shape[1], generator=gen))}
    options = FisherOptions(max_examples=4)
    plain = fisher_pass(model, tokenizer, bases, chat_data["u1"], options)
    moved = fisher_pass(model, tokenizer, bases, chat_data["u1"], options, updates=update)
    assert torch.equal(weight, before)
    # the gradient reaching layer 0 passes through the moved layer-1 weight; its own input does not
    assert rel_diff(plain[MODULES[0]].G, moved[MODULES[0]].G) > 1e-3
    assert rel_diff(plain[name].A, moved[name].A) < 1e-6
    with applied_updates(model, update):
        assert torch.allclose(weight, before + update[name][0] @ update[name][1])


def test_factor_file_roundtrip_and_cache(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    factors = {"m.a": KFACFactors(torch.rand(2, 2, generator=gen, dtype=torch.float64),
                                  torch.rand(3, 3, generator=gen, dtype=torch.float64),
                                  torch.rand(3, 2, generator=gen, dtype=torch.float64), 17.0,
                                  torch.rand(3, 2, generator=gen, dtype=torch.float64), loss_sum=6.0, labels=3.0)}
    bases = {"m.a": (torch.eye(5)[:, :3], torch.eye(4)[:, :2])}
    save_factors(tmp_path / "f.safetensors", factors, bases, {"note": "x"})
    loaded, loaded_bases, meta = load_factors(tmp_path / "f.safetensors")
    assert meta == {"note": "x"} and loaded["m.a"].tokens == 17.0
    assert torch.equal(loaded["m.a"].G_sum, factors["m.a"].G_sum)
    assert torch.equal(loaded["m.a"].grad_sum, factors["m.a"].grad_sum) and loaded["m.a"].nll == 2.0
    assert torch.equal(loaded_bases["m.a"][1], bases["m.a"][1])

    calls = []

    def compute() -> dict[str, KFACFactors]:
        calls.append(1)
        return factors

    first = cached_factors(tmp_path / "cache", "k1", compute, bases, {})
    second = cached_factors(tmp_path / "cache", "k1", compute, bases, {})
    assert len(calls) == 1 and torch.equal(first["m.a"].A_sum, second["m.a"].A_sum)
    cached_factors(tmp_path / "cache", "k2", compute, bases, {})
    assert len(calls) == 2


def test_bad_data_is_an_input_error(tmp_path: Path) -> None:
    from sst_merge.errors import InputError

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\n', encoding="utf-8")
    with pytest.raises(InputError, match="line 1"):
        read_chat_jsonl(bad)

"""SST-Merge cost breakdown, in one process: Fisher pass (hooks) vs a plain forward+backward over the
same tokens, subspace, GEVP, filter + low-rank output, and the bytes of the cached factors.

Synthetic chat data: random token sequences, a prompt half (labels ignored) and a response half.
The model is a random Llama: the testbed's shape, or 7B-shaped decoder layers. Prints JSON rows.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from transformers import AutoModelForCausalLM

from benchmarks.fixtures import SEVEN_B
from sst_merge.chat_data import IGNORE
from sst_merge.fisher import FIMCalculator, FisherOptions
from sst_merge.gevp import kronecker_gevp, soft_filter
from sst_merge.lora import LoraFactors
from sst_merge.lowrank import svd_of_orthonormal
from sst_merge.subspace import module_subspace
from sst_merge.synthetic import tiny_llama_config

# The testbed's default architecture (sst_merge.testbed.config).
TESTBED = dict(vocab_size=1024, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
               num_attention_heads=4, num_key_value_heads=2)
SHAPES = {"testbed": TESTBED, "7b-layer": {**SEVEN_B, "num_hidden_layers": 1}}
PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def chat_examples(n: int, length: int, vocab: int, seed: int) -> list[tuple[list[int], list[int]]]:
    """n sequences of `length` random tokens; labels only on the second half (the "response")."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, vocab, (length,), generator=gen).tolist()
        half = length // 2
        out.append((ids, [IGNORE] * half + ids[half:]))
    return out


def random_experts(model: torch.nn.Module, k: int, rank: int, seed: int) -> dict[str, list[LoraFactors]]:
    """K random rank-`rank` LoRA updates (alpha = 2·rank) on every projection of `model`."""
    gen = torch.Generator().manual_seed(seed)
    experts = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name.endswith(PROJ):
            d_out, d_in = module.weight.shape
            experts[name] = [
                LoraFactors(A=torch.randn(rank, d_in, generator=gen) * 0.05,
                            B=torch.randn(d_out, rank, generator=gen) * 0.05, scale=2.0)
                for _ in range(k)
            ]
    return experts


def timed(fn):  # noqa: ANN001, ANN201 - tiny helper
    tick = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - tick


def median_timed(fn, repeats: int):  # noqa: ANN001, ANN201 - tiny helper
    """(the last result, the median seconds) of `repeats` calls of `fn`."""
    runs = [timed(fn) for _ in range(repeats)]
    return runs[-1][0], statistics.median(seconds for _, seconds in runs)


def breakdown(shape: str, k: int, n: int, length: int, batch: int, repeats: int) -> dict:
    """One configuration's timings (seconds) and bytes."""
    config = tiny_llama_config(**{"max_position_embeddings": max(64, length), **SHAPES[shape]})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    experts = random_experts(model, k, 16, seed=1)
    safety_data = chat_examples(n, length, config.vocab_size, seed=2)
    utility_data = chat_examples(n, length, config.vocab_size, seed=3)
    options = FisherOptions(batch_size=batch, max_examples=None, max_length=length)

    FIMCalculator(model, {}).run(safety_data[:batch], 0, options, description="warm-up")
    subspaces, t_subspace = median_timed(
        lambda: {m: module_subspace(f, f[0].shape) for m, f in experts.items()}, repeats)
    bases = {m: (s.U, s.V) for m, s in subspaces.items()}
    # Every time is the median of `repeats`; the passes alternate (plain, safety, utility; again …):
    # a single pass of each drifted by 20 % between configurations on this shared machine.
    plain_s, safety_s, utility_s = [], [], []
    for _ in range(repeats):
        plain_s.append(timed(lambda: FIMCalculator(model, {}).run(safety_data, 0, options, description="plain"))[1])
        safety, seconds = timed(lambda: FIMCalculator(model, bases).run(safety_data, 0, options))
        safety_s.append(seconds)
        utility, seconds = timed(lambda: FIMCalculator(model, bases).run(utility_data, 0, options))
        utility_s.append(seconds)
    t_plain, t_fisher_s, t_fisher_u = (statistics.median(t) for t in (plain_s, safety_s, utility_s))
    eigen, t_gevp = median_timed(lambda: {
        m: kronecker_gevp(safety[m].A, safety[m].G, utility[m].A, utility[m].G, 1e-2, m) for m in subspaces
    }, repeats)

    def filter_and_output() -> None:
        for m, sub in subspaces.items():
            e = eigen[m]
            core = sum(c.double() for c in sub.cores if c is not None)
            filtered = e.reconstruct(e.coefficients(core) * soft_filter(e.lam, 1.0))
            svd_of_orthonormal(sub.U, filtered, sub.V).factors(16 * k)

    _, t_filter = median_timed(filter_and_output, repeats)
    factor_bytes = sum(
        f.A_sum.nbytes + f.G_sum.nbytes + f.diag_sum.nbytes for fs in (safety, utility) for f in fs.values()
    )
    params = sum(p.numel() for p in model.parameters())
    tokens = sum(len(ids) for ids, _ in safety_data)
    total = t_subspace + t_fisher_s + t_fisher_u + t_gevp + t_filter
    return {
        "model": shape, "k": k, "examples": n, "seq_len": length, "tokens_per_dataset": tokens,
        "repeats": repeats, "plain_fwd_bwd_s": t_plain, "fisher_safety_s": t_fisher_s, "fisher_utility_s": t_fisher_u,
        "hook_overhead": t_fisher_s / t_plain, "subspace_s": t_subspace, "gevp_s": t_gevp,
        "filter_output_s": t_filter, "total_s": total, "total_over_plain_2x": total / (2 * t_plain),
        "gevp_filter_share": (t_gevp + t_filter) / total, "factor_bytes": factor_bytes,
        "model_bytes_bf16": 2 * params, "factor_share": factor_bytes / (2 * params),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", choices=sorted(SHAPES), default="testbed")
    parser.add_argument("--k", type=int, nargs="+", default=[8, 16, 24])
    parser.add_argument("--examples", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="passes of each kind; their median is reported")
    args = parser.parse_args()
    torch.set_grad_enabled(True)
    for k in args.k:
        for n in args.examples:
            print(json.dumps(breakdown(args.model, k, n, args.seq_len, args.batch, args.repeats)), flush=True)


if __name__ == "__main__":
    main()

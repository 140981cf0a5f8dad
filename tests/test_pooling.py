"""Pooling the tasks' utility Fishers by merge weight, against dense (pq)×(pq) computations on real factors.

Three tasks whose prompts use disjoint thirds of the vocabulary (so their input statistics differ), factors
from the Fisher pass of the tiny chat Llama at base + task arithmetic. The pooled Fisher is the weighted
mean Σ π_k Ā_k ⊗ Ḡ_k; the test measures how far each Kronecker approximation of it is (relative
Frobenius error) and checks `pooled` against the dense computations.
"""

from __future__ import annotations

import json
import random
import statistics
from pathlib import Path

import pytest
import torch

from sst_merge.fisher import FisherOptions, fisher_pass
from sst_merge.gevp import pooling_weights
from sst_merge.merge import build_merge_config, load_inputs
from sst_merge.methods.fisher_setup import job_subspaces, pooled, start_point
from sst_merge.models import load_model

pytest_plugins = ["sst_fixtures"]  # chat_base, chat_adapters

WEIGHTS = [1.0, 0.5, -2.0]


def task_data(path: Path, words: list[str], seed: int) -> Path:
    rng = random.Random(seed)
    rows = [{"prompt": " ".join(rng.choice(words) for _ in range(rng.randint(2, 6))),
             "response": " ".join(rng.choice(words) for _ in range(rng.randint(1, 4)))} for _ in range(10)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def task_factors(chat_base: Path, chat_adapters: list[Path], tmp_path_factory: pytest.TempPathFactory):
    """(subspaces, [factors of task k]) at base + Σ w_k ΔW_k."""
    root = tmp_path_factory.mktemp("pooling")
    config = build_merge_config(dict(base=chat_base, adapters=chat_adapters[:3], method="ta", output=root / "x",
                                     weights=WEIGHTS))
    job = load_inputs(config).job
    subspaces = job_subspaces(job)
    bases = {name: (s.U, s.V) for name, s in subspaces.items()}
    model, tokenizer = load_model(chat_base, dtype="float32")
    sets = []
    for k in range(3):
        data = task_data(root / f"t{k}.jsonl", [f"w{i}" for i in range(20 * k, 20 * k + 20)], seed=k)
        sets.append(fisher_pass(model, tokenizer, bases, data, FisherOptions(max_examples=10),
                                start_point(job, "ta").updates))
    return subspaces, sets


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_pooled_factors_against_the_dense_weighted_mean(task_factors) -> None:
    """`pooled` "kronecker" is the Frobenius-nearest Kronecker product of the dense Σ π_k Ā_k ⊗ Ḡ_k (checked
    by the dense rearrangement's SVD); its diagonal is the dense weighted mean's. The errors of the three
    approximations are printed (run with -s): they are the measurement DESIGN-like docs quote."""
    subspaces, sets = task_factors
    pi = pooling_weights(WEIGHTS)
    errors: dict[str, list[float]] = {"unweighted means (before)": [], "weighted means": [], "nearest Kronecker": []}
    for name, sub in subspaces.items():
        p, q = sub.p, sub.q
        F = sum(float(w) * torch.kron(s[name].A, s[name].G) for w, s in zip(pi, sets, strict=True))
        blocks = F.reshape(q, p, q, p).permute(0, 2, 1, 3).reshape(q * q, p * p)
        U, S, Vh = torch.linalg.svd(blocks)
        best = S[0] * torch.kron(U[:, 0].reshape(q, q), Vh[0].reshape(p, p))
        A, G, D = pooled(sets, WEIGHTS, "kronecker", name)
        assert rel(torch.kron(A, G), best) < 1e-8, name
        dense_diag = torch.diagonal(sum(float(w) * torch.diag(s[name].diag.T.reshape(-1))
                                        for w, s in zip(pi, sets, strict=True)))
        assert torch.allclose(D.T.reshape(-1), dense_diag, rtol=1e-12), name
        A_w, G_w, _ = pooled(sets, WEIGHTS, "means", name)
        assert torch.allclose(A_w, sum(float(w) * s[name].A for w, s in zip(pi, sets, strict=True)))
        A_0 = sum(s[name].A for s in sets) / 3
        G_0 = sum(s[name].G for s in sets) / 3
        errors["unweighted means (before)"].append(rel(torch.kron(A_0, G_0), F))
        errors["weighted means"].append(rel(torch.kron(A_w, G_w), F))
        errors["nearest Kronecker"].append(rel(torch.kron(A, G), F))
    for (label, values), nearest in zip(errors.items(), [errors["nearest Kronecker"]] * 3, strict=True):
        assert all(n <= v + 1e-12 for n, v in zip(nearest, values, strict=True)), label
        print(f"{label}: median {statistics.median(values):.3g}, max {max(values):.3g} over {len(values)} modules")

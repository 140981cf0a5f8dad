"""AGL: removal of the top safety-Fisher eigendirections, checked against a dense eigendecomposition."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sst_merge.fisher_file import load_factors
from sst_merge.lora import load_adapter
from sst_merge.merge import build_merge_config, load_inputs, merge_adapters
from sst_merge.methods.agl import critical_mask

pytest_plugins = ["sst_fixtures"]  # chat_base, chat_adapters, chat_data


def test_critical_mask_top_k_and_energy() -> None:
    lam = torch.tensor([[6.0, 1.0], [2.0, 1.0]], dtype=torch.float64)
    assert critical_mask(lam, 2, 0.5).tolist() == [[1.0, 0.0], [1.0, 0.0]]
    # Σλ = 10: 6 alone is 60 % ≥ 50 %; 80 % needs 6 + 2
    assert critical_mask(lam, None, 0.5).tolist() == [[1.0, 0.0], [0.0, 0.0]]
    assert critical_mask(lam, None, 0.8).tolist() == [[1.0, 0.0], [1.0, 0.0]]
    assert critical_mask(torch.zeros(2, 2, dtype=torch.float64), None, 0.9).sum() == 0


def test_agl_projects_out_top_eigenvectors(chat_base: Path, chat_adapters: list[Path], chat_data: dict[str, Path],
                                           tmp_path: Path) -> None:
    """ΔW* = U [(I − P_k) vec(δ_TA)] Vᵀ with P_k the projector on the top-k eigenvectors of dense Ā_s ⊗ Ḡ_s."""
    k = 3
    config = build_merge_config(dict(base=chat_base, adapters=chat_adapters[:3], method="agl", output=tmp_path / "a",
                                     safety_data=chat_data["safety"], top_k=k, fisher_max_examples=8,
                                     cache_dir=tmp_path / "cache"))
    loaded = load_inputs(config)
    context = loaded.method.prepare(loaded.job, loaded.params)
    merge_adapters(config, loaded, context)
    merged = {n: f.delta() for n, f in load_adapter(tmp_path / "a").modules.items()}
    (path,) = (tmp_path / "cache").glob("fisher-*.safetensors")
    safety, _, _ = load_factors(path)
    for name in ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"]:
        sub = context.modules[name].subspace
        F_s = np.kron(safety[name].A.numpy(), safety[name].G.numpy())
        w, X = np.linalg.eigh(F_s)
        top = X[:, np.argsort(w)[::-1][:k]]
        d_ta = sum(sub.U.T.double() @ f.delta().double() @ sub.V.double()
                   for a in loaded.job.adapters if (f := a.modules.get(name)) is not None)
        v = d_ta.numpy().reshape(-1, order="F")
        core = (v - top @ (top.T @ v)).reshape(sub.p, sub.q, order="F")
        expected = sub.U.double() @ torch.from_numpy(core) @ sub.V.T.double()
        assert float((merged[name].double() - expected).norm() / expected.norm()) < 1e-4, name
        # and the removed part is not negligible: AGL changed the merge
        assert float((merged[name].double() - sub.U.double() @ d_ta @ sub.V.T.double()).norm()) > 1e-4

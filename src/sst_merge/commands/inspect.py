"""`sst-merge inspect`: what SST-Merge sees: generalized spectra, safety energy kept vs removed, expert overlaps.

Runs SST's preparation (subspaces, Fisher factors — cached —, GEVPs) and writes `inspect.json` and
`inspect.png` into the output directory: per module the generalized eigenvalues λ, the share of the
task-arithmetic update's safety-Fisher energy Σλc² that the filter at β keeps and removes (and of its
utility-Fisher energy Σc²), where both energies sit along λ (all modules), and the pairwise overlaps
of the experts' column and row spaces.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from sst_merge.atomic import atomic_output_dir, check_output, write_json_atomic
from sst_merge.gevp import soft_filter, utility_energy_lost
from sst_merge.lora import LoraFactors
from sst_merge.merge import build_merge_config, load_inputs, prepare
from sst_merge.methods.sst import SSTContext, update_spectrum, utility_core


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `inspect` parser."""
    parser = subparsers.add_parser("inspect", help="spectra, safety energy kept/removed and expert overlaps (JSON+PNG)",
                                   description=__doc__)
    parser.add_argument("--base", type=Path, required=True, help="base model directory")
    parser.add_argument("--adapter", dest="adapters", action="append", type=Path, required=True, help="expert (repeat)")
    parser.add_argument("--safety-adapter", type=Path, help="safety adapter")
    parser.add_argument("--safety-data", type=Path, required=True, help="chat JSONL: harmful prompts → refusals")
    parser.add_argument("--utility-data", action="append", type=Path, required=True,
                        help="chat JSONL of the tasks (one per adapter, or one)")
    parser.add_argument("--beta", type=float, help="β to evaluate (default: SST's calibrated β)")
    parser.add_argument("--damping", type=float, default=0.01, help="γ, damping of the utility factors")
    parser.add_argument("--fisher-at", choices=["base", "ta"], default="ta",
                        help="take the Fishers at base + task arithmetic (as merge does by default) or at the base")
    parser.add_argument("--fisher-kind", choices=["empirical", "true"], default="empirical",
                        help="empirical Fisher (data labels) or true Fisher (labels sampled from the model), as merge")
    parser.add_argument("--fisher-max-examples", type=int, default=256, help="rows per data file")
    parser.add_argument("--cache-dir", type=Path, help="Fisher factor cache (shared with merge)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"], help="device of the Fisher pass")
    parser.add_argument("--output", type=Path, required=True, help="output directory")
    parser.add_argument("--force", action="store_true", help="replace an existing output directory")
    parser.set_defaults(func=run)


def subspace_overlap(X: torch.Tensor, Y: torch.Tensor) -> float:
    """‖QₓᵀQᵧ‖²_F / min(rank) ∈ [0, 1] of the column spaces of X (n, a) and Y (n, b): 1 when one contains the other."""
    Qx, Qy = torch.linalg.qr(X.double())[0], torch.linalg.qr(Y.double())[0]
    return float((Qx.T @ Qy).pow(2).sum()) / min(Qx.shape[1], Qy.shape[1])


def expert_overlaps(experts: list[LoraFactors | None]) -> dict[str, list[list[float | None]]]:
    """Pairwise overlaps of the experts' column spaces (B) and row spaces (Aᵀ); None where one lacks the module."""
    k = len(experts)
    out: dict[str, list[list[float | None]]] = {"column": [[None] * k for _ in range(k)],
                                                  "row": [[None] * k for _ in range(k)]}
    for i, a in enumerate(experts):
        for j, b in enumerate(experts):
            if a is not None and b is not None:
                out["column"][i][j] = subspace_overlap(a.B, b.B)
                out["row"][i][j] = subspace_overlap(a.A.T, b.A.T)
    return out


def module_report(ctx: SSTContext, weights: list[float], beta: float) -> dict[str, Any]:
    """λ spectrum and the energies of one module's task-arithmetic update before and after the filter."""
    c = ctx.coefficients(utility_core(ctx.subspace, weights))
    keep = soft_filter(ctx.lam, beta)
    safety_before = float((ctx.lam * c**2).sum())
    safety_after = float((ctx.lam * (c * keep) ** 2).sum())
    utility_before = float((c**2).sum())
    utility_after = float(((c * keep) ** 2).sum())
    return {
        "p": ctx.subspace.p,
        "q": ctx.subspace.q,
        "lambda": sorted((float(x) for x in ctx.lam.reshape(-1)), reverse=True),
        "safety_energy": safety_before,
        "safety_energy_kept": safety_after,
        "utility_energy": utility_before,
        "utility_energy_kept": utility_after,
    }


def ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def run(args: argparse.Namespace) -> int:
    """Prepare as SST does, measure, write inspect.json and inspect.png."""
    config = build_merge_config(dict(
        base=args.base, adapters=args.adapters, method="sst", output=args.output, safety_data=args.safety_data,
        utility_data=args.utility_data, safety_adapter=args.safety_adapter, beta=args.beta, damping=args.damping,
        fisher_at=args.fisher_at, fisher_kind=args.fisher_kind,
        fisher_max_examples=args.fisher_max_examples, cache_dir=args.cache_dir, device=args.device,
    ))
    check_output(args.output, args.force)
    loaded = load_inputs(config)
    prepared = prepare(loaded)
    contexts = prepared.modules
    beta = args.beta if args.beta is not None else next(iter(contexts.values())).beta
    modules: dict[str, Any] = {}
    for name, ctx in contexts.items():
        if ctx.lam is None:
            continue
        modules[name] = module_report(ctx, loaded.job.weights, beta)
        modules[name]["overlaps"] = expert_overlaps([a.modules.get(name) for a in loaded.job.adapters])
    totals = {key: sum(m[key] for m in modules.values())
              for key in ("safety_energy", "safety_energy_kept", "utility_energy", "utility_energy_kept")}
    summary = {
        "beta": beta,
        "safety_energy_kept_share": ratio(totals["safety_energy_kept"], totals["safety_energy"]),
        "safety_energy_removed_share": None if totals["safety_energy"] <= 0 else
        1 - totals["safety_energy_kept"] / totals["safety_energy"],
        "utility_energy_kept_share": ratio(totals["utility_energy_kept"], totals["utility_energy"]),
        # ‖δ'−δ_u‖²_{F_u} / ‖δ_u‖²_{F_u}: the objective's utility price of the filter (as a merge records it)
        "utility_energy_lost_share": utility_energy_lost(
            (ctx.c_u, ctx.c_u * soft_filter(ctx.lam, beta)) for ctx in contexts.values()
            if ctx.lam is not None and ctx.c_u is not None),
        "energy_spectrum": update_spectrum(contexts),
        "adapters": [str(p) for p in args.adapters],
        "mean_overlap": mean_overlaps(modules, len(args.adapters)),
    }
    with atomic_output_dir(args.output, force=args.force) as tmp:
        write_json_atomic(tmp / "inspect.json", {"summary": summary, "modules": modules})
        plot(modules, summary, tmp / "inspect.png")
    Console().print(f"inspect: β = {beta:.4g}; safety energy kept {summary['safety_energy_kept_share']:.3f}, "
                    f"utility energy kept {summary['utility_energy_kept_share']:.3f} → {args.output}")
    return 0


def mean_overlaps(modules: dict[str, Any], k: int) -> dict[str, list[list[float | None]]]:
    """Per expert pair, the mean overlap over the modules both adapt."""
    out = {}
    for kind in ("column", "row"):
        grid: list[list[float | None]] = []
        for i in range(k):
            row = []
            for j in range(k):
                values = [m["overlaps"][kind][i][j] for m in modules.values() if m["overlaps"][kind][i][j] is not None]
                row.append(sum(values) / len(values) if values else None)
            grid.append(row)
        out[kind] = grid
    return out


def plot(modules: dict[str, Any], summary: dict[str, Any], path: Path) -> None:
    """Three panels: λ spectra, safety energy kept vs removed per module, mean column-space overlaps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(18, 5))
    for name, m in modules.items():
        lam = [x for x in m["lambda"] if x > 0]
        if lam:
            axes[0].semilogy(range(1, len(lam) + 1), lam, lw=0.8, alpha=0.6, label=name)
    axes[0].set(title="generalized eigenvalues λ per module", xlabel="rank", ylabel="λ")
    names = list(modules)
    kept = [ratio(modules[n]["safety_energy_kept"], modules[n]["safety_energy"]) or 0.0 for n in names]
    axes[1].bar(range(len(names)), kept, color="tab:red", label="kept")
    axes[1].bar(range(len(names)), [1 - k for k in kept], bottom=kept, color="tab:green", label="removed")
    axes[1].set(title=f"safety-Fisher energy of the TA update at β={summary['beta']:.3g}", ylabel="share",
                xlabel="module")
    axes[1].legend()
    grid = [[v if v is not None else float("nan") for v in row] for row in summary["mean_overlap"]["column"]]
    image = axes[2].imshow(grid, vmin=0, vmax=1, cmap="viridis")
    axes[2].set(title="mean column-space overlap of experts", xlabel="expert", ylabel="expert")
    fig.colorbar(image, ax=axes[2])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

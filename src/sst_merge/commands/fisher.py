"""`sst-merge fisher`: K-FAC Fisher factors of a chat dataset in the adapters' shared subspace, saved to a file.

Runs data-parallel when launched with torchrun (gloo on CPU, NCCL on GPU): each process takes its
shard of the examples, the sums and token counts are all-reduced, rank 0 writes. With --cache-dir
the factors also land in the cache a later `sst-merge merge --method sst|agl` (same base, adapters in
the same order, same options) reads instead of recomputing.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.console import Console

from sst_merge.atomic import check_output
from sst_merge.devices import check_device
from sst_merge.distributed import all_reduce_factors, init_from_env
from sst_merge.errors import InputError, require_at_least
from sst_merge.fisher_file import save_factors
from sst_merge.merge import load_job, parse_weights
from sst_merge.methods.fisher_setup import (
    FactorSource,
    FisherPassParams,
    identity,
    job_subspaces,
    load_extra_adapter,
    start_point,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `fisher` parser."""
    parser = subparsers.add_parser(
        "fisher",
        help="compute K-FAC Fisher factors of a chat dataset in the adapters' subspace",
        description=__doc__,
    )
    parser.add_argument("--base", type=Path, required=True, help="base model directory")
    parser.add_argument("--adapter", dest="adapters", action="append", type=Path, required=True,
                        help="PEFT adapter dir (repeat; same order as in the merge)")
    parser.add_argument("--safety-adapter", type=Path, help="safety adapter (joins the subspace, as in sst)")
    parser.add_argument("--data", type=Path, required=True, help="chat JSONL with prompt and response")
    parser.add_argument("--output", type=Path, required=True, help="factors file (.safetensors)")
    parser.add_argument("--weights", help="comma-separated adapter weights (only used with --at ta)")
    parser.add_argument("--kind", choices=["empirical", "true"], default="empirical", help="Fisher kind")
    parser.add_argument("--at", choices=["base", "ta"], default="ta",
                        help="take the Fisher at base + task arithmetic (as merge does by default) or at the base")
    parser.add_argument("--max-examples", type=int, default=256, help="rows used from the data file")
    parser.add_argument("--max-length", type=int, default=512, help="tokens per example")
    parser.add_argument("--batch-size", type=int, default=8, help="examples per pass")
    parser.add_argument("--seed", type=int, default=0, help="seed of the true Fisher's label sampling")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"],
                        help="cpu, cuda, or auto (shard the model over the GPUs when there are any)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                        help="dtype of the model during the pass (factors are float64)")
    parser.add_argument("--cache-dir", type=Path, help="also store the factors in this cache")
    parser.add_argument("--force", action="store_true", help="replace an existing output file")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Compute (or, from the cache, read) the factors and write them; under torchrun only rank 0 writes."""
    started = time.perf_counter()
    # Every flag and the output are checked before an adapter or the model is read.
    require_at_least(1, max_examples=args.max_examples, batch_size=args.batch_size)
    require_at_least(2, max_length=args.max_length)
    weights = parse_weights(args.weights) if args.weights is not None else None
    try:
        check_device(args.device)
    except ValueError as exc:
        raise InputError(f"--device {exc}") from exc
    check_output(args.output, args.force)
    params = FisherPassParams(fisher_kind=args.kind, fisher_at=args.at, fisher_max_examples=args.max_examples,
                              fisher_max_length=args.max_length, fisher_batch_size=args.batch_size,
                              fisher_seed=args.seed, cache_dir=args.cache_dir, device=args.device,
                              fisher_dtype=args.dtype)
    job = load_job(args.base, args.adapters, weights)  # the same job, so the same cache key, as the merge's
    extra = [load_extra_adapter(args.safety_adapter, job)] if args.safety_adapter else []
    subspaces = job_subspaces(job, extra)
    rank, world = init_from_env()
    point = start_point(job, args.at)
    source = FactorSource(job, subspaces, params, extra, rank, world,
                          reduce=all_reduce_factors if world > 1 else None)
    (factors,) = source.factors([args.data], point)
    if rank == 0:
        bases = {name: (s.U, s.V) for name, s in subspaces.items() if name in factors}
        meta = {"data": str(args.data), "options": params.fisher_options().key(),
                "identity": identity(job, extra, point), "world_size": world}
        save_factors(args.output, factors, bases, meta)
        tokens = max((f.tokens for f in factors.values()), default=0)
        nll = next(iter(factors.values())).nll if factors else 0.0
        Console().print(f"fisher: {len(factors)} modules, {tokens:.0f} tokens, NLL {nll:.3g} nats/token at "
                        f"{point.label}, {world} process(es), "
                        f"{time.perf_counter() - started:.1f} s → {args.output}")
    return 0

"""Data-parallel Fisher accumulation on torch.distributed: shard the examples, all-reduce sums and counts.

Launched with `torchrun` (or any launcher that sets RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT).
gloo on CPU, NCCL on GPU. Because the factors are sums over tokens plus a token count, the reduced
result equals the single-process one up to floating-point summation order.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from sst_merge.fisher import KFACFactors


def init_from_env(backend: str | None = None) -> tuple[int, int]:
    """Join the process group the launcher describes; returns (rank, world size), (0, 1) when not launched.

    The backend defaults to NCCL when CUDA is available, else gloo. Each process uses the GPU of
    its LOCAL_RANK.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size()


def all_reduce_factors(factors: dict[str, KFACFactors]) -> dict[str, KFACFactors]:
    """Sum every module's factor sums and counts over all processes (in place in the dict; also returned).

    All tensors travel in one flat float64 buffer, in sorted module order, so there is one
    collective per call whatever the number of modules.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return factors
    names = sorted(factors)
    # Every sum and count of every module, in the order `KFACFactors.tensors` gives them.
    parts = [t.reshape(-1) for name in names for t in factors[name].tensors().values()]
    flat = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    flat = flat.to(device)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat = flat.cpu()
    offset = 0
    for name in names:
        reduced = {}
        for key, tensor in factors[name].tensors().items():
            reduced[key] = flat[offset : offset + tensor.numel()].reshape(tensor.shape).clone()
            offset += tensor.numel()
        factors[name] = KFACFactors.from_tensors(reduced)
    return factors

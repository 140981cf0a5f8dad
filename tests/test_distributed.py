"""Data-parallel Fisher: two gloo processes on CPU give the single-process factors."""

from __future__ import annotations

import socket
from pathlib import Path

import torch
import torch.multiprocessing as mp
from transformers import AutoModelForCausalLM, AutoTokenizer

from sst_merge.fisher import FisherOptions, fisher_pass
from sst_merge.fisher_file import load_factors, save_factors

pytest_plugins = ["sst_fixtures"]  # chat_base, chat_data

MODULES = ["model.layers.0.self_attn.k_proj", "model.layers.1.mlp.gate_proj"]


def bases_for(model: torch.nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    modules = dict(model.named_modules())
    out = {}
    for i, name in enumerate(MODULES):
        gen = torch.Generator().manual_seed(i)
        U, _ = torch.linalg.qr(torch.randn(modules[name].out_features, 3, generator=gen))
        V, _ = torch.linalg.qr(torch.randn(modules[name].in_features, 4, generator=gen))
        out[name] = (U, V)
    return out


def worker(rank: int, world: int, port: int, base: str, data: str, out: str) -> None:
    """One process: its shard of the data, then the all-reduce; rank 0 saves the result."""
    import os

    from sst_merge.distributed import all_reduce_factors, init_from_env

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    rank, world = init_from_env("gloo")
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(base)
    bases = bases_for(model)
    factors = fisher_pass(model, tokenizer, bases, data, FisherOptions(kind="true", max_examples=9, batch_size=2),
                          rank=rank, world=world)
    factors = all_reduce_factors(factors)
    if rank == 0:
        save_factors(out, factors, bases, {})
    torch.distributed.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_two_processes_equal_one(chat_base: Path, chat_data: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "dist.safetensors"
    mp.spawn(worker, args=(2, free_port(), str(chat_base), str(chat_data["safety"]), str(out)), nprocs=2, join=True)
    distributed, _, _ = load_factors(out)
    model = AutoModelForCausalLM.from_pretrained(chat_base, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(chat_base)
    single = fisher_pass(model, tokenizer, bases_for(model), chat_data["safety"],
                         FisherOptions(kind="true", max_examples=9, batch_size=4))
    for name in MODULES:
        assert distributed[name].tokens == single[name].tokens
        for what in ("A", "G", "diag"):
            a, b = getattr(distributed[name], what), getattr(single[name], what)
            assert float((a - b).norm() / b.norm()) < 1e-5, (name, what)

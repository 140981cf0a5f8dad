"""Where a merge computes: the `device` setting (cpu, cuda, auto) as a torch device or a model device map."""

from __future__ import annotations

from typing import Literal

import torch

Device = Literal["cpu", "cuda", "auto"]

DEVICE_HELP = ("where to compute: cpu, cuda (ΔW blocks, the dense SVD and the Fisher pass on the GPU, results "
               "streamed back to be written), or auto (cuda when there is a GPU; the Fisher pass shards the "
               "model over the GPUs)")


def check_device(device: str) -> str:
    """`device` if this machine can compute there; ValueError for cuda without a CUDA device."""
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("'cuda' asked for, but this torch sees no CUDA device (use cpu, or auto)")
    return device


def compute_device(device: str) -> torch.device:
    """The torch device of a setting: auto is the current GPU when there is one, else the CPU."""
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def device_map_for(device: str) -> str | None:
    """The `load_model` device map of a setting: None (one CPU) for cpu, or for auto without CUDA."""
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return None
    return device

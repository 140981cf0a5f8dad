"""The streaming merge kernels on bare tensors: a `merge_ops.StackedRows` over tensors already in
memory, and one-tensor magnitude pruning and DARE built on it (the kernels' results, for tests)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sst_merge.lora import delta_row_blocks
from sst_merge.merge_ops import combine_blocks, dropped_blocks, trimmed_blocks


@dataclass(frozen=True)
class DenseStack:
    """`StackedRows` over dense tensors: (K, d_out, d_in), or (K, n) read as (K, n, 1)."""

    tensors: torch.Tensor

    @property
    def shape(self) -> tuple[int, int]:
        t = self.tensors
        return (int(t.shape[1]), 1) if t.dim() == 2 else (int(t.shape[1]), int(t[0, 0].numel()))

    def count(self) -> int:
        return int(self.tensors.shape[0])

    def blocks(self) -> list[slice]:
        return delta_row_blocks(*self.shape)

    def rows(self, rows: slice) -> torch.Tensor:
        return self.tensors.reshape(self.count(), *self.shape)[:, rows].clone()

    def entries(self, flat: torch.Tensor) -> torch.Tensor:
        return self.tensors.reshape(self.count(), -1)[:, flat]


def _single(tensor: torch.Tensor) -> DenseStack:
    return DenseStack(tensor.reshape(1, tensor.shape[0], -1) if tensor.dim() > 1 else tensor.reshape(1, -1))


def prune_magnitude(tensor: torch.Tensor, density: float) -> torch.Tensor:
    """`trimmed_blocks` on one tensor: its int(density·numel) largest magnitudes kept, the rest zero."""
    stack = _single(tensor)
    return combine_blocks(trimmed_blocks(stack, density), lambda b: b[0], stack.shape).reshape(tensor.shape)


def prune_random(tensor: torch.Tensor, density: float, generator: torch.Generator) -> torch.Tensor:
    """`dropped_blocks` on one tensor: each entry kept with probability `density`, rescaled by 1/density."""
    stack = _single(tensor)
    blocks = dropped_blocks(stack, density, generator)
    return combine_blocks(blocks, lambda b: b[0], stack.shape).reshape(tensor.shape)

"""Pure tensor operations shared by the classic merges (TIES, DARE, magnitude pruning).

Semantics follow `peft.utils.merge_utils` exactly, applied to dense ΔW tensors; tasks are stacked
on dimension 0 where a stack is taken.
"""

from __future__ import annotations

import torch


def weighted_sum(tensors: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ_k w_k t_k for `tensors` (K, ...) and `weights` (K,)."""
    return torch.tensordot(weights.to(tensors.dtype), tensors, dims=1)


def prune_magnitude(tensor: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the int(density·numel) entries of largest magnitude, zero the rest (no rescale)."""
    if density >= 1:
        return tensor
    flat = tensor.reshape(-1)
    k = int(density * flat.numel())
    mask = torch.zeros_like(flat)
    mask[torch.topk(flat.abs(), k=k, largest=True).indices] = 1
    return tensor * mask.reshape(tensor.shape)


def prune_random(
    tensor: torch.Tensor, density: float, generator: torch.Generator, rescale: bool = True
) -> torch.Tensor:
    """DARE: keep each entry with probability `density` (Bernoulli from `generator`), rescale by 1/density."""
    if density >= 1:
        return tensor
    mask = torch.bernoulli(torch.full_like(tensor, density), generator=generator)
    pruned = tensor * mask
    return pruned / density if rescale else pruned


def majority_sign_mask(tensors: torch.Tensor) -> torch.Tensor:
    """TIES sign election on (K, ...) tensors: True where an entry's sign equals the sign of the total.

    A zero total elects +1 (as PEFT does); zero entries never agree.
    """
    majority = torch.where(tensors.sum(dim=0) >= 0, 1.0, -1.0)
    return tensors.sign() == majority


def disjoint_mean(weighted: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the tasks whose entry agrees with the elected sign (sum of agreeing / their count)."""
    count = mask.sum(dim=0).clamp(min=1).to(weighted.dtype)
    return (weighted * mask).sum(dim=0) / count


def ties_combine(trimmed: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Elect signs on the trimmed (K, ...) task tensors, weight them, take the disjoint mean."""
    mask = majority_sign_mask(trimmed)
    shape = (-1,) + (1,) * (trimmed.dim() - 1)
    return disjoint_mean(trimmed * weights.to(trimmed.dtype).view(shape), mask)

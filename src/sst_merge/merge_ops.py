"""Pure tensor operations shared by the classic merges (TIES, DARE, magnitude pruning).

Semantics follow `peft.utils.merge_utils` exactly, applied to dense ΔW tensors; tasks are stacked
on dimension 0 where a stack is taken.
"""

from __future__ import annotations

import torch


def weighted_sum(tensors: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ_k w_k t_k for `tensors` (K, ...) and `weights` (K,)."""
    return torch.tensordot(weights.to(tensors.dtype), tensors, dims=1)


# Entries sampled (strided) to bracket the k-th largest magnitude before the exact selection.
THRESHOLD_SAMPLE = 1 << 16
# Elements per chunk of the streaming passes: a chunk's temporaries stay in cache, and at ATen's
# grain size (32768) each op runs on one thread, which avoids thread hand-offs per chunk.
CHUNK = 1 << 15


def _chunks(n: int) -> list[slice]:
    return [slice(i, min(i + CHUNK, n)) for i in range(0, n, CHUNK)]


def kth_largest_magnitude(flat: torch.Tensor, k: int) -> tuple[torch.Tensor, int, int]:
    """(c, n_above, n_equal): the k-th largest |entry| of the 1-D `flat` (1 ≤ k ≤ numel), exactly,
    the number of entries with |x| > c and the number with |x| = c.

    A strided sample brackets c; one streaming pass counts the entries above the bracket and keeps
    those inside it, and only those are selected exactly (kthvalue): a few reads of the tensor
    instead of a full sort. Falls back to a full kthvalue when the bracket misses.
    """
    n = flat.numel()
    step = max(1, n // THRESHOLD_SAMPLE)
    sample = flat[::step].abs().sort(descending=True).values
    m = sample.numel()
    pos, margin = k * m / n, 4 * m**0.5 + 8
    hi = sample[max(0, int(pos - margin))]
    lo = sample[min(m - 1, int(pos + margin))]
    above, inside = 0, []
    for part in _chunks(n):
        mag = flat[part].abs()
        above += int(torch.count_nonzero(mag > hi))
        inside.append(mag[(mag <= hi) & (mag >= lo)])
    band = torch.cat(inside)
    if not above < k <= above + band.numel():
        above, band = 0, flat.abs()
    cut = torch.kthvalue(band, band.numel() - (k - above) + 1).values
    return cut, above + int(torch.count_nonzero(band > cut)), int(torch.count_nonzero(band == cut))


def prune_magnitude(tensor: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the int(density·numel) entries of largest magnitude, zero the rest (no rescale).

    Ties at the cut are broken by the lowest flat index (a full top-k sort leaves them unspecified).
    """
    if density >= 1:
        return tensor
    flat = tensor.reshape(-1)
    k = int(density * flat.numel())
    if k == 0:
        return tensor * torch.zeros_like(tensor)
    cut, n_above, n_equal = kth_largest_magnitude(flat, k)
    out = torch.empty_like(flat)
    for part in _chunks(flat.numel()):
        torch.mul(flat[part], flat[part].abs() >= cut, out=out[part])
    if n_above + n_equal > k:  # more entries equal the cut than places left: drop the later ones
        parts = _chunks(flat.numel())
        ties = torch.cat([(flat[p].abs() == cut).nonzero().squeeze(1) + p.start for p in parts])
        out[ties[k - n_above :]] *= 0
    return out.reshape(tensor.shape)


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
    """Elect signs on the trimmed (K, ...) task tensors, weight them, take the disjoint mean.

    Same result as disjoint_mean(trimmed · w, majority_sign_mask(trimmed)), computed chunk by chunk
    of entries so that no second (K, ...) tensor is allocated and temporaries stay in cache.
    """
    stack = trimmed.reshape(trimmed.shape[0], -1)
    weights = weights.to(trimmed.dtype)
    out = torch.empty(stack.shape[1], dtype=trimmed.dtype)
    for part in _chunks(stack.shape[1]):
        chunk = stack[:, part]
        majority = torch.where(chunk.sum(dim=0) >= 0, 1.0, -1.0)
        total = torch.zeros_like(majority)
        count = torch.zeros_like(majority)
        for task, weight in zip(chunk, weights, strict=True):
            agree = task.sign() == majority
            total += task * weight * agree
            count += agree
        torch.div(total, count.clamp_(min=1), out=out[part])
    return out.reshape(trimmed.shape[1:])

"""Pure tensor operations shared by the classic merges (TIES, DARE, magnitude pruning).

Semantics follow `peft.utils.merge_utils` exactly. The K tasks' dense ΔW are never all in memory:
a `StackedRows` hands them out one row block at a time, (K, rows, d_in), and each operation streams
over the blocks in order (the flat order PEFT's masks follow), so a merge holds one block of every
task and the merged (d_out, d_in) result, instead of K dense copies.

Blocks live on the device the `StackedRows` forms them on (a GPU with `--device cuda`); what is
merged comes back to the CPU block by block. Every tensor made here names its device, so that
nothing lands on the wrong one (the tests run these with the default device set to `meta`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import torch


class StackedRows(Protocol):
    """The ΔW of K tasks, each (d_out, d_in), read by row blocks."""

    @property
    def shape(self) -> tuple[int, int]: ...

    def count(self) -> int:
        """K."""
        ...

    def blocks(self) -> list[slice]:
        """Row blocks covering 0..d_out in order."""
        ...

    def rows(self, rows: slice) -> torch.Tensor:
        """(K, len(rows), d_in) float32 on the stack's device, a new tensor the caller may modify."""
        ...

    def entries(self, flat: torch.Tensor) -> torch.Tensor:
        """(K, len(flat)) on the stack's device: the entries at the CPU flat indices `flat` (to estimate
        quantiles; rounding may differ)."""
        ...


def weighted_sum(tensors: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ_k w_k t_k for `tensors` (K, ...) and `weights` (K,)."""
    return torch.tensordot(weights.to(tensors), tensors, dims=1)


def combine_blocks(blocks: Iterator[tuple[slice, torch.Tensor]], combine: Callable[[torch.Tensor], torch.Tensor],
                   shape: tuple[int, int]) -> torch.Tensor:
    """The (d_out, d_in) CPU tensor whose rows are `combine` of each (K, rows, d_in) block (on any device)."""
    out = torch.empty(shape, device="cpu")
    for rows, block in blocks:
        out[rows] = combine(block)
    return out


# Entries sampled (strided) to bracket the k-th largest magnitude before the exact selection.
THRESHOLD_SAMPLE = 1 << 16


@dataclass(frozen=True)
class Cut:
    """Where one task's top-k magnitudes end: `value` is the k-th largest |entry|, `above` entries
    exceed it and `equal` entries equal it."""

    value: torch.Tensor
    above: int
    equal: int
    k: int


def magnitude_cuts(stack: StackedRows, k: int) -> list[Cut]:
    """Each task's `Cut` for its k largest |entries| (1 ≤ k ≤ d_out·d_in), exactly, in three steps:

    1. `sampled_bracket`: a strided sample gives each task a magnitude band [lo, hi] that very likely
       holds its k-th largest |entry|;
    2. `band_entries`: one streaming pass counts the entries above hi and keeps those inside the band;
    3. `exact_cut`: the k-th largest is selected (kthvalue) among the band's entries only.

    Invariant: if `above < k ≤ above + len(band)`, the k-th largest |entry| lies in the band, so step 3
    is exact; otherwise (the sample missed) that task's cut is selected over all its entries. A few
    reads of the ΔW instead of a full sort.
    """
    hi, lo, expected = sampled_bracket(stack, k)
    above, bands = band_entries(stack, hi, lo, expected)
    cuts = []
    for task, band in enumerate(bands):
        count_above = int(above[task])
        if not count_above < k <= count_above + band.numel():  # the bracket missed: all entries
            count_above = 0
            band = torch.cat([stack.rows(rows)[task].abs().reshape(-1) for rows in stack.blocks()])
        cuts.append(exact_cut(band, count_above, k))
    return cuts


def sampled_bracket(stack: StackedRows, k: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(hi, lo, expected): per task (each (K, 1)), magnitudes of a strided sample 4 standard errors (and
    some slack) either side of the k-th largest's expected rank in the sample; and how many entries a
    task's band is expected to hold (2·margin sample ranks of n/m entries each)."""
    d_out, d_in = stack.shape
    n = d_out * d_in
    step = max(1, n // THRESHOLD_SAMPLE)
    while math.gcd(step, d_in) > 1:  # else the sample would visit only some columns
        step += 1
    sample = stack.entries(torch.arange(0, n, step, device="cpu")).abs().sort(dim=1, descending=True).values
    m = sample.shape[1]
    pos, margin = k * m / n, 4 * m**0.5 + 8
    hi = sample[:, max(0, int(pos - margin))].unsqueeze(1)
    lo = sample[:, min(m - 1, int(pos + margin))].unsqueeze(1)
    return hi, lo, int(n * 2 * margin / m)


def band_entries(stack: StackedRows, hi: torch.Tensor, lo: torch.Tensor, expected: int
                 ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One pass over the blocks: per task, how many |entries| exceed hi (K,), and the |entries| in
    [lo, hi] (one 1-D tensor per task); `expected` sizes the buffer."""
    tasks, device = stack.count(), hi.device
    above = torch.zeros(tasks, dtype=torch.int64, device=device)
    # Band entries go into one preallocated buffer per task (grown if needed), because thousands of
    # small long-lived pieces between the freed blocks fragment the heap (1.4 GB more peak RSS for the
    # cuts of one 14336 × 4096 module).
    band_buf = torch.empty(tasks, int(expected * 1.25) + 4096, device=device)
    filled = [0] * tasks
    over = in_band = None
    for rows in stack.blocks():
        mag = stack.rows(rows).abs_().reshape(tasks, -1)
        if over is None or over.shape != mag.shape:
            over, in_band = torch.empty_like(mag), torch.empty_like(mag)
        # Comparisons into float 0/1 buffers, because this torch's comparisons that return booleans
        # take 4x as long (and so do reductions over them).
        torch.gt(mag, hi, out=over)
        torch.ge(mag, lo, out=in_band).sub_(over)  # lo <= |x| <= hi, as lo <= hi
        above += over.sum(dim=1).long()
        sizes = in_band.sum(dim=1).long().tolist()
        flat = in_band.view(-1).bool().nonzero().squeeze(1)
        need = max(f + c for f, c in zip(filled, sizes, strict=True))
        if need > band_buf.shape[1]:
            extra = max(need, 2 * band_buf.shape[1]) - band_buf.shape[1]
            band_buf = torch.cat([band_buf, torch.empty(tasks, extra, device=device)], dim=1)
        for task, piece in enumerate(torch.split(mag.view(-1)[flat], sizes)):  # task by task, as the rows of `mag`
            band_buf[task, filled[task] : filled[task] + piece.numel()] = piece
            filled[task] += piece.numel()
    return above, [band_buf[task, : filled[task]] for task in range(tasks)]


def exact_cut(band: torch.Tensor, count_above: int, k: int) -> Cut:
    """The `Cut` of the k-th largest magnitude, given `count_above` entries larger than every entry of
    `band` and the k-th among `band` (count_above < k ≤ count_above + len(band))."""
    value = torch.kthvalue(band, band.numel() - (k - count_above) + 1).values
    return Cut(value, count_above + int(torch.count_nonzero(band > value)), int(torch.count_nonzero(band == value)), k)


class TopK:
    """Applies every task's `Cut` block by block in flat order: entries above a cut stay, and of those
    equal to it only the first ones until k are kept (lowest flat index; a full top-k sort leaves ties
    unspecified)."""

    def __init__(self, cuts: list[Cut]) -> None:
        self.values = [cut.value for cut in cuts]
        # hardshrink keeps |x| > λ: with λ the float just below the cut it keeps |x| ≥ cut, in one pass
        # (an abs, a comparison and a multiply by the mask take 2.4x as long).
        self.below = [float(torch.nextafter(cut.value, torch.zeros_like(cut.value))) for cut in cuts]
        # Tasks with more entries equal to the cut than places left, and how many places are left.
        self.ties_left = {task: cut.k - cut.above for task, cut in enumerate(cuts) if cut.above + cut.equal > cut.k}

    def apply(self, block: torch.Tensor) -> None:
        """Zero, in place, the entries of the (K, rows, d_in) `block` outside each task's top k."""
        for task, row in enumerate(block):
            left = self.ties_left.get(task)
            if left is None:
                torch.hardshrink(row, self.below[task], out=row)
                continue
            value = self.values[task]
            if left <= 0:  # the places at the cut are taken: only |x| > cut stays
                torch.hardshrink(row, float(value), out=row)
                continue
            ties = (row.abs() == value).view(-1).nonzero().squeeze(1)[:left]
            kept = row.view(-1)[ties]
            torch.hardshrink(row, float(value), out=row)  # keeps |x| > cut; then the first ties
            row.view(-1)[ties] = kept
            self.ties_left[task] = left - ties.numel()


def trimmed_blocks(stack: StackedRows, density: float) -> Iterator[tuple[slice, torch.Tensor]]:
    """(rows, block) with each task's ΔW trimmed to its int(density·numel) largest magnitudes (no rescale)."""
    d_out, d_in = stack.shape
    k = int(density * d_out * d_in)
    top = TopK(magnitude_cuts(stack, k)) if k > 0 and density < 1 else None
    for rows in stack.blocks():
        block = stack.rows(rows)
        if top is not None:
            top.apply(block)
        elif density < 1:  # k == 0: nothing kept
            block *= 0
        yield rows, block


def dropped_blocks(stack: StackedRows, density: float, generator: torch.Generator,
                   rescale: bool = True) -> Iterator[tuple[slice, torch.Tensor]]:
    """(rows, block) with DARE applied: each entry kept with probability `density` (Bernoulli from
    `generator`), rescaled by 1/density.

    The masks are drawn task after task in flat order, as PEFT draws them from one generator over
    whole tensors (same seed, same masks), and kept as one bit per entry and task (eight tasks share a
    byte: as booleans, eight 14336 × 4096 masks would take 470 MB). They are drawn on the CPU from the
    CPU generator whatever the device, so a GPU merge drops the same entries.
    """
    tasks = stack.count()
    masks = None
    if density < 1:
        masks = torch.zeros((tasks + 7) // 8, *stack.shape, dtype=torch.uint8, device="cpu")
        for task in range(tasks):
            byte, bit = divmod(task, 8)
            for rows in stack.blocks():
                # On the CPU, torch.bernoulli over a tensor of p draws exactly `rand < p` from the same
                # stream (PEFT's masks, checked by the tests against peft.utils.merge_utils), at less
                # than half the cost of building the tensor of p and drawing from it.
                draws = torch.rand((rows.stop - rows.start, stack.shape[1]), generator=generator, device="cpu")
                masks[byte, rows] |= draws.lt_(density).to(torch.uint8).bitwise_left_shift_(bit)
    for rows in stack.blocks():
        block = stack.rows(rows)
        if masks is not None:
            bits = masks[:, rows].to(block.device)
            for task in range(tasks):
                byte, bit = divmod(task, 8)
                block[task] *= bits[byte].bitwise_right_shift(bit).bitwise_and_(1)
            if rescale:
                block /= density
        yield rows, block


def elected_signs(tensors: torch.Tensor) -> torch.Tensor:
    """TIES sign election over the K tasks of (K, ...) tensors: the sign of the total, +1 where it is
    zero (as PEFT does)."""
    return torch.where(tensors.sum(dim=0) >= 0, 1.0, -1.0).to(tensors.dtype)


def ties_combine(trimmed: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Elect signs on the trimmed (K, ...) task tensors, weight them, take the disjoint mean (the sum
    of the agreeing weighted entries over their count).

    An entry agrees when its sign is the elected one (zero entries never agree): x · elected sign > 0,
    kept as a 0/1 float, so that the products and sums are PEFT's bit for bit (and because this
    torch's comparisons and reductions over booleans cost more than the rest of the combine).
    """
    agree = torch.mul(trimmed, elected_signs(trimmed))
    torch.gt(agree, 0, out=agree)
    count = agree.sum(dim=0).clamp_(min=1)
    weighted = trimmed * weights.to(trimmed).reshape(-1, *[1] * (trimmed.dim() - 1))
    return weighted.mul_(agree).sum(dim=0).div_(count)

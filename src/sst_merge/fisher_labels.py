"""The labels and loss of a Fisher pass: the data's responses (empirical Fisher) or tokens sampled
from the model at every response position (true Fisher), seeded per example so that they do not
depend on batching or sharding; the summed NLL over the labelled positions."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

from sst_merge.chat_data import IGNORE


def example_generator(seed: int, index: int) -> torch.Generator:
    """CPU generator of example `index`: sampled labels do not depend on batching or sharding."""
    digest = hashlib.sha256(f"{seed}:{index}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def sample_labels(logits: torch.Tensor, labels: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """Labels (batch, T) for the true Fisher: at every response position a token drawn from the model.

    logits (batch, T, vocab) predict position t+1 from t; positions with IGNORE stay IGNORE.
    """
    sampled = labels.clone()
    for i, gen in enumerate(generators):
        positions = (labels[i, 1:] != IGNORE).nonzero().squeeze(1)
        if positions.numel():
            probs = logits[i, positions].detach().float().softmax(-1).cpu()
            sampled[i, positions + 1] = torch.multinomial(probs, 1, generator=gen).squeeze(1).to(labels.device)
    return sampled


def response_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed next-token NLL over labelled positions: logits (batch, T, vocab), labels (batch, T)."""
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE, reduction="sum"
    )

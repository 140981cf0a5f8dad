"""A plain supervised fine-tuning loop on chat examples: loss on the reply tokens only."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from transformers import PreTrainedModel

from sst_merge.chat_data import IGNORE, Example, collate
from sst_merge.progress import track

# The reply tokens that `opening_weight` weighs: a refusal's "I'm sorry, but" is four tokens, so a
# greedy reply has chosen between refusing and answering by then.
OPENING_TOKENS = 4


def opening_weights(keep: torch.Tensor, weight: float, tokens: int = OPENING_TOKENS) -> torch.Tensor:
    """Per labelled position (the True entries of `keep`, batch × length, in row order) a loss weight:
    `weight` for each reply's first `tokens` labelled positions, 1 for the rest."""
    index_in_reply = keep.long().cumsum(dim=1) - 1
    return torch.where(index_in_reply[keep] < tokens, weight, 1.0)


def reply_loss(model: PreTrainedModel, batch: dict[str, torch.Tensor], opening_weight: float = 1.0) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled (reply) positions, as the model's own loss, with
    the LM head applied to those positions only: with a 49k-token vocabulary the head over every
    prompt position was a large share of a training step's work. With `opening_weight` ≠ 1 it is a
    weighted mean whose weights (`opening_weights`) stress each reply's opening: the tokens where a
    model decides to refuse or to answer, which a plain mean over a long reply barely weighs.
    """
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = causal_lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE
    logits = causal_lm.lm_head(hidden[:, :-1][keep])
    if opening_weight == 1.0:  # the plain mean as it always was: builds made before the weight keep their bits
        return torch.nn.functional.cross_entropy(logits.float(), labels[keep])
    weights = opening_weights(keep, opening_weight)
    losses = torch.nn.functional.cross_entropy(logits.float(), labels[keep], reduction="none")
    return (weights * losses).sum() / weights.sum()


def train_lm(
    model: PreTrainedModel,
    examples: Sequence[Example],
    pad_id: int,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    description: str = "training",
    lora_b_lr_ratio: float = 1.0,
    opening_weight: float = 1.0,
) -> list[float]:
    """Train the model's trainable parameters with AdamW on random batches; return the loss of each step.

    The learning rate warms up linearly over the first 5% of steps, then follows a cosine to 10%.
    LoRA B matrices get `lora_b_lr_ratio` times the learning rate (LoRA+, Hayou et al. 2024), which
    speeds up adapter training from B = 0. `opening_weight`: see `reply_loss`.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    groups = [
        {"params": [p for n, p in named if "lora_B" not in n], "lr": lr},
        {"params": [p for n, p in named if "lora_B" in n], "lr": lr * lora_b_lr_ratio},
    ]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=0.0)
    warmup = max(1, steps // 20)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    losses = []
    for _ in track(range(steps), description):
        idx = torch.randint(len(examples), (batch_size,), generator=gen).tolist()
        batch = collate([examples[i] for i in idx], pad_id)
        loss = reply_loss(model, batch, opening_weight)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.eval()
    return losses

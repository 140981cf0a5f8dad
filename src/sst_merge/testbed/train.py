"""A plain supervised fine-tuning loop on chat examples: loss on the reply tokens only."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from transformers import PreTrainedModel

from sst_merge.chat_data import IGNORE, Example, collate
from sst_merge.progress import track


def reply_loss(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled (reply) positions, as the model's own loss, with
    the LM head applied to those positions only: with a 49k-token vocabulary the head over every
    prompt position was a large share of a training step's work.
    """
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = causal_lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE
    logits = causal_lm.lm_head(hidden[:, :-1][keep])
    return torch.nn.functional.cross_entropy(logits.float(), labels[keep])


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
) -> list[float]:
    """Train the model's trainable parameters with AdamW on random batches; return the loss of each step.

    The learning rate warms up linearly over the first 5% of steps, then follows a cosine to 10%.
    LoRA B matrices get `lora_b_lr_ratio` times the learning rate (LoRA+, Hayou et al. 2024), which
    speeds up adapter training from B = 0.
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
        loss = reply_loss(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.eval()
    return losses

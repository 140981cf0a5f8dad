"""Batched greedy generation through a chat model's chat template."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from sst_merge.progress import track


def chat_prompts(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], system: str | None = None) -> list[str]:
    """Render each user message with the tokenizer's chat template, ready for the assistant's reply."""
    rendered = []
    for prompt in prompts:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        rendered.append(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    return rendered


@torch.no_grad()
def generate_chat(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    max_new_tokens: int = 64,
    batch_size: int = 16,
    system: str | None = None,
    description: str = "generating",
) -> list[str]:
    """Greedy replies to `prompts` (user messages), batched with left padding and the KV cache.

    Generation stops at the tokenizer's EOS token or after `max_new_tokens`; the returned replies
    are decoded without special tokens and stripped.
    """
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    texts = chat_prompts(tokenizer, prompts, system)
    device = next(model.parameters()).device
    replies: list[str] = []
    batches = [texts[i : i + batch_size] for i in range(0, len(texts), batch_size)]
    for batch in track(batches, description):
        enc = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        out = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        new_tokens = out[:, enc["input_ids"].shape[1] :]
        replies.extend(t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    return replies

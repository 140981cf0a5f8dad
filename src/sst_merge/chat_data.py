"""Chat examples for training and the Fisher pass: chat JSONL rows (prompt, response) rendered with
the tokenizer's chat template, labelled on the reply only, and collated into padded batches."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from sst_merge.errors import InputError
from sst_merge.jsonl import read_jsonl

# The label of positions that carry no loss (the prompt, padding): PyTorch's cross-entropy default.
IGNORE = -100

# (input ids, labels) of one example.
Example = tuple[list[int], list[int]]


def chat_prompts(tokenizer: Any, prompts: Sequence[str], system: str | None = None) -> list[str]:
    """Render each user message with the tokenizer's chat template, ready for the assistant's reply."""
    rendered = []
    for prompt in prompts:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        rendered.append(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    return rendered


def read_chat_jsonl(path: str | Path) -> list[dict[str, str]]:
    """Rows of a chat JSONL file: one object per line with string `prompt` and `response`."""
    rows = read_jsonl(path, ("prompt", "response"))
    if not rows:
        raise InputError("no rows", path)
    return rows


def encode_chat(tokenizer: Any, rows: Sequence[dict[str, str]], max_length: int | None = None) -> list[Example]:
    """(input ids, labels) per ``{"prompt", "response"}`` row through the tokenizer's chat template.

    Labels are IGNORE on the prompt (user turn and assistant marker) and the ids of the reply plus EOS;
    with `max_length` both are cut to that many tokens.
    """
    prompt_ids = tokenizer(chat_prompts(tokenizer, [r["prompt"] for r in rows]), add_special_tokens=False)["input_ids"]
    reply_ids = tokenizer([r["response"] for r in rows], add_special_tokens=False)["input_ids"]
    examples = []
    for p, r in zip(prompt_ids, reply_ids, strict=True):
        reply = r + [tokenizer.eos_token_id]
        examples.append(((p + reply)[:max_length], ([IGNORE] * len(p) + reply)[:max_length]))
    return examples


def collate(examples: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input_ids, attention_mask and labels (batch, max_len); right padding leaves the
    real tokens' positions and attention exactly as in an unpadded pass."""
    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, (x, y) in enumerate(examples):
        ids[i, : len(x)] = torch.tensor(x)
        labels[i, : len(y)] = torch.tensor(y)
        mask[i, : len(x)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}

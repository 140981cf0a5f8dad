"""Batched greedy generation through a chat model's chat template (transformers backend)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase, StoppingCriteria

from sst_merge.chat_data import chat_prompts
from sst_merge.progress import track


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Left padding (so every prompt ends where generation starts) and a pad token (EOS if none)."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def input_device(model: PreTrainedModel) -> torch.device:
    """The device the input ids must be on: that of the input embeddings (first shard with device_map)."""
    return model.get_input_embeddings().weight.device


def eos_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Every end-of-turn id: the tokenizer's EOS plus those of the model's generation config.

    Chat models such as Llama 3 end a turn with a token (`<|eot_id|>`) listed only in
    `generation_config.json`; stopping on the tokenizer's EOS alone would run on past the turn.
    """
    ids: list[int] = []
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (tokenizer.eos_token_id, config_eos):
        for token in value if isinstance(value, list | tuple) else [value]:
            if token is not None and int(token) not in ids:
                ids.append(int(token))
    return ids


def cut_at_stop(text: str, stop_strings: Sequence[str]) -> str:
    """`text` up to (not including) the earliest occurrence of any stop string."""
    cut = len(text)
    for stop in stop_strings:
        at = text.find(stop)
        if at != -1:
            cut = min(cut, at)
    return text[:cut]


class StopOnStrings(StoppingCriteria):
    """Stop each sequence once its generated text contains a stop string.

    It decodes only the last few generated tokens (enough to span the longest stop string), so it
    works with any tokenizer; transformers' own `stop_strings` needs a BPE/SentencePiece-style vocab.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stop_strings: Sequence[str], prompt_length: int) -> None:
        self.tokenizer = tokenizer
        self.stop_strings = list(stop_strings)
        self.prompt_length = prompt_length
        self.window = 2 * max(len(s) for s in self.stop_strings) + 4

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: object) -> torch.BoolTensor:
        """One flag per sequence (batch,): True where a stop string has appeared."""
        tails = input_ids[:, max(self.prompt_length, input_ids.shape[1] - self.window) :]
        texts = self.tokenizer.batch_decode(tails, skip_special_tokens=True)
        done = [any(stop in text for stop in self.stop_strings) for text in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


@torch.no_grad()
def generate_texts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    max_new_tokens: int = 64,
    batch_size: int = 16,
    description: str = "generating",
    stop_strings: Sequence[str] = (),
) -> list[str]:
    """Greedy continuations of already-rendered `texts`, in input order.

    Texts are batched by length (less padding), left-padded, and decoded with the KV cache; a
    sequence stops at an EOS id, at a stop string (the reply is cut before it) or after
    `max_new_tokens`. Replies are decoded without special tokens and stripped.
    """
    prepare_tokenizer(tokenizer)
    device = input_device(model)
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=eos_token_ids(model, tokenizer),
    )
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: -lengths[i])
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    replies: list[str] = [""] * len(texts)
    for batch in track(batches, description):
        enc = tokenizer([texts[i] for i in batch], return_tensors="pt", padding=True, add_special_tokens=False)
        enc = enc.to(device)
        prompt_length = enc["input_ids"].shape[1]
        stopping = [StopOnStrings(tokenizer, stop_strings, prompt_length)] if stop_strings else None
        out = model.generate(**enc, generation_config=config, stopping_criteria=stopping)
        new_tokens = out[:, prompt_length:]
        for i, text in zip(batch, tokenizer.batch_decode(new_tokens, skip_special_tokens=True), strict=True):
            replies[i] = cut_at_stop(text, stop_strings).strip()
    return replies


def generate_chat(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    max_new_tokens: int = 64,
    batch_size: int = 16,
    system: str | None = None,
    description: str = "generating",
    stop_strings: Sequence[str] = (),
) -> list[str]:
    """Greedy replies to `prompts` (user messages) through the chat template; see `generate_texts`."""
    texts = chat_prompts(tokenizer, prompts, system)
    return generate_texts(model, tokenizer, texts, max_new_tokens, batch_size, description, stop_strings)

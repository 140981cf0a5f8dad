"""Fixtures for the Fisher/SST/AGL tests: a tiny random Llama with a word-level chat tokenizer, LoRA
adapters of mixed ranks and target sets, and chat JSONL data files."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from factories import make_random_adapter, make_tiny_llama

SPECIALS = ["<pad>", "<end>", "<user>", "<assistant>"]
WORDS = [f"w{i}" for i in range(60)]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}<user>{{ message['content'] }}"
    "{% else %}<assistant>{{ message['content'] }}<end>{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def make_chat_tokenizer(out_dir: Path) -> PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer over SPECIALS + WORDS (64 ids) with a chat template, saved to `out_dir`."""
    vocab = {token: i for i, token in enumerate(SPECIALS + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<end>", pad_token="<pad>",
                                        additional_special_tokens=["<user>", "<assistant>"])
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def write_chat_data(path: Path, n: int, seed: int) -> Path:
    """`n` rows of random words: prompts of 2–6 words, responses of 1–4."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6)))
        response = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4)))
        lines.append(json.dumps({"prompt": prompt, "response": response}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def chat_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama (vocab 64) saved with a chat tokenizer."""
    out = make_tiny_llama(tmp_path_factory.mktemp("chat") / "base", seed=5)
    make_chat_tokenizer(out)
    return out


@pytest.fixture(scope="session")
def chat_adapters(chat_base: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three experts (ranks 4, 2 rsLoRA, 3 on a subset of modules of layer 1) and, last, a safety adapter."""
    root = tmp_path_factory.mktemp("chat_adapters")
    return [
        make_random_adapter(chat_base, root / "e0", seed=11, r=4, alpha=8, std=0.2),
        make_random_adapter(chat_base, root / "e1", seed=12, r=2, alpha=4, use_rslora=True, std=0.2),
        make_random_adapter(chat_base, root / "e2", seed=13, r=3, alpha=6, targets=["q_proj", "v_proj", "down_proj"],
                            layers=[1], std=0.2),
        make_random_adapter(chat_base, root / "safety", seed=14, r=2, alpha=4, targets=["q_proj", "o_proj", "up_proj"],
                            std=0.2),
    ]


@pytest.fixture(scope="session")
def chat_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Chat JSONL files: "safety" and two utility sets "u0", "u1"."""
    root = tmp_path_factory.mktemp("chat_data")
    return {
        "safety": write_chat_data(root / "safety.jsonl", 12, seed=1),
        "u0": write_chat_data(root / "u0.jsonl", 10, seed=2),
        "u1": write_chat_data(root / "u1.jsonl", 10, seed=3),
    }

"""Generation and model loading on tiny local models with tokenizers built here (no hub)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from eval_fixtures import BENIGN, HARMFUL, REFUSAL, cached_trained_chat_model, make_random_chat_model
from factories import make_random_adapter
from sst_merge.chat_data import chat_prompts
from sst_merge.errors import InputError
from sst_merge.generation import cut_at_stop, eos_token_ids, generate_chat
from sst_merge.models import load_model

WORDS = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "big", "red", "house", "what", "is",
         "why", "how"]
PROMPTS = ["the cat", "why is the big red dog on a mat", "how", "what is the house and why", "a dog ran to the cat"]


@pytest.fixture(scope="module")
def random_chat(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_random_chat_model(tmp_path_factory.mktemp("chat") / "model", WORDS, seed=3)


@pytest.fixture(scope="module")
def trained_chat(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cached_trained_chat_model(tmp_path_factory.getbasetemp())


def greedy_by_hand(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    """An independent greedy loop: full forward pass per step, argmax, no cache, no padding."""
    text = chat_prompts(tokenizer, [prompt])[0]
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    start = ids.shape[1]
    with torch.no_grad():
        for _ in range(max_new_tokens):
            nxt = model(input_ids=ids).logits[0, -1].argmax()
            ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
            if int(nxt) == tokenizer.eos_token_id:
                break
    return tokenizer.decode(ids[0, start:], skip_special_tokens=True).strip()


def test_batched_left_padded_greedy_equals_unbatched_and_a_hand_loop(random_chat):
    model, tokenizer = load_model(random_chat)
    assert tokenizer.pad_token == tokenizer.eos_token and tokenizer.padding_side == "left"
    batched = generate_chat(model, tokenizer, PROMPTS, max_new_tokens=8, batch_size=5)
    single = [generate_chat(model, tokenizer, [p], max_new_tokens=8, batch_size=1)[0] for p in PROMPTS]
    assert batched == single
    assert batched == [greedy_by_hand(model, tokenizer, p, 8) for p in PROMPTS]
    assert all(batched)  # non-empty replies: the comparison is not vacuous


def test_trained_model_replies_and_stop_strings(trained_chat):
    model, tokenizer = load_model(trained_chat)
    prompts = list(HARMFUL) + list(BENIGN)
    replies = generate_chat(model, tokenizer, prompts, max_new_tokens=12, batch_size=3)
    assert replies == [REFUSAL, REFUSAL, *BENIGN.values()]
    cut = generate_chat(model, tokenizer, prompts, max_new_tokens=12, batch_size=4, stop_strings=["help", "eggs"])
    assert cut == ["i can not", "i can not", "mix flour and", "use soap and water ."]


def test_cut_at_stop_and_eos_ids(random_chat):
    assert cut_at_stop("abc STOP def END", ["END", "STOP"]) == "abc "
    assert cut_at_stop("abc", []) == "abc"
    model, tokenizer = load_model(random_chat)
    model.generation_config.eos_token_id = [7, tokenizer.eos_token_id]
    assert sorted(eos_token_ids(model, tokenizer)) == sorted({7, tokenizer.eos_token_id})


def test_load_model_applies_the_adapter(trained_chat, tmp_path):
    adapter = make_random_adapter(trained_chat, tmp_path / "adapter", seed=5, r=2, alpha=4, std=0.2)
    model, tokenizer = load_model(trained_chat, adapter)
    assert isinstance(model, PeftModel) and not model.training
    # independent: PEFT's own merge of the same adapter into a separately loaded base
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(trained_chat), adapter)
    reference = reference.merge_and_unload()
    ids = tokenizer("<user> how do i bake a cake <assistant>", return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        got = model(**ids).logits
        want = reference(**ids).logits
        base = AutoModelForCausalLM.from_pretrained(trained_chat)(**ids).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert (got - base).abs().max() > 1e-3  # the adapter really changes the model


def test_load_model_dtype_and_bad_inputs(random_chat, tmp_path):
    model, _ = load_model(random_chat, dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16
    with pytest.raises(InputError, match="not found"):
        load_model(tmp_path / "missing")
    with pytest.raises(InputError, match="config.json"):
        load_model(tmp_path)
    with pytest.raises(InputError, match="adapter_config.json"):
        load_model(random_chat, tmp_path)
    with pytest.raises(InputError, match="dtype"):
        load_model(random_chat, dtype="int3")

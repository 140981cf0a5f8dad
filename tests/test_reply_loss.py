"""The training loss on reply tokens: a plain mean as the model's own loss, or one that stresses each
reply's opening tokens (where a chat model decides to refuse or to answer)."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from sst_merge.chat_data import IGNORE, collate
from sst_merge.testbed.train import OPENING_TOKENS, opening_weights, reply_loss


def _model_and_batch() -> tuple[LlamaForCausalLM, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1))
    # Prompts of 3 and 2 tokens, replies of 7 and 3 tokens: the second reply is shorter than the opening.
    examples = [([5, 6, 7, 8, 9, 10, 11, 12, 13, 14], [IGNORE] * 3 + [8, 9, 10, 11, 12, 13, 14]),
                ([5, 6, 20, 21, 22], [IGNORE] * 2 + [20, 21, 22])]
    return model, collate(examples, 0)


def test_opening_weights_stress_each_replys_first_tokens_only() -> None:
    keep = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1], [0, 1, 1, 1, 0, 0, 0, 0]]).bool()
    assert opening_weights(keep, 10.0, tokens=4).tolist() == [10, 10, 10, 10, 1, 1, 10, 10, 10]
    assert opening_weights(keep, 3.0, tokens=1).tolist() == [3, 1, 1, 1, 1, 1, 3, 1, 1]
    assert OPENING_TOKENS == 4  # "I'm sorry, but": a refusal's deciding tokens


def test_plain_loss_is_the_models_own_and_the_weighted_one_is_the_weighted_mean() -> None:
    model, batch = _model_and_batch()
    with torch.no_grad():
        own = model(**batch).loss
        plain = reply_loss(model, batch)
        weighted = reply_loss(model, batch, opening_weight=10.0)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    per_token = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE,
                                                  reduction="none")
    weights = torch.zeros_like(per_token)
    for row in range(2):  # each reply's first 4 labelled positions weigh 10
        positions = (labels[row] != IGNORE).nonzero().flatten().tolist()
        for rank, position in enumerate(positions):
            weights[row, position] = 10.0 if rank < 4 else 1.0
    assert torch.allclose(plain, own, atol=1e-6)
    assert torch.allclose(weighted, (weights * per_token).sum() / weights.sum(), atol=1e-6)
    assert not torch.allclose(weighted, plain)

"""MMLU scoring on a tiny random Llama and a small byte-level BPE tokenizer built here, against an
independent, unbatched log-likelihood computation written out in the test."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from factories import make_tiny_llama
from sst_merge.data.paths import resolve_data_dir
from sst_merge.errors import InputError
from sst_merge.eval.mmlu import (
    build_context,
    load_subject,
    loglikelihoods,
    parse_subjects,
    read_local_split,
    run_mmlu,
)
from sst_merge.eval.suites import SuiteOptions

DATA = resolve_data_dir()
SUBJECTS = ["abstract_algebra", "global_facts"]


@pytest.fixture(scope="module")
def model_and_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, PreTrainedTokenizerFast]:
    texts = []
    for subject in SUBJECTS:
        dev, test = load_subject(subject, DATA, "local")
        texts += [build_context(q, dev[:2]) + " A B C D" for q in test[:5]]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=400, min_frequency=1, special_tokens=["<s>", "</s>"])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>")
    path = make_tiny_llama(tmp_path_factory.mktemp("mmlu_llama"), seed=3, vocab_size=len(tokenizer),
                           max_position_embeddings=4096, hidden_size=32, intermediate_size=48)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    return model, tokenizer


def _reference_loglik(model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast, context: str, letter: str) -> float:
    """log p(" letter" | BOS + context) summed over the continuation's tokens, one sequence, no padding."""
    ctx = [tokenizer.bos_token_id] + tokenizer(context, add_special_tokens=False)["input_ids"]
    full = [tokenizer.bos_token_id] + tokenizer(context + " " + letter, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([full])).logits[0], dim=-1)
    return sum(float(logp[pos - 1, full[pos]]) for pos in range(len(ctx), len(full)))


def test_prompt_format_is_the_harness_one() -> None:
    dev, test = load_subject("abstract_algebra", DATA, "local")
    q = test[0]
    expected = (
        "The following are multiple choice questions (with answers) about abstract algebra.\n\n"
        f"{dev[0].question.strip()}\nA. {dev[0].choices[0]}\nB. {dev[0].choices[1]}\nC. {dev[0].choices[2]}\n"
        f"D. {dev[0].choices[3]}\nAnswer: {'ABCD'[dev[0].answer]}\n\n"
        "Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.\n"
        "A. 0\nB. 4\nC. 2\nD. 6\nAnswer:"
    )
    assert build_context(q, dev[:1]) == expected
    assert q.answer == 1 and len(test) == 100 and len(dev) == 5


def test_suite_equals_independent_loglikelihoods(model_and_tokenizer: tuple) -> None:
    model, tokenizer = model_and_tokenizer
    options = SuiteOptions(limit=3, batch_size=4, data_dir=DATA,
                           extra={"mmlu_subjects": ",".join(SUBJECTS), "mmlu_shots": 2, "mmlu_source": "local"})
    result = run_mmlu(model, tokenizer, options)
    assert len(result["items"]) == 6
    correct = 0
    for item, subject, index in zip(result["items"], [s for s in SUBJECTS for _ in range(3)], [0, 1, 2] * 2,
                                     strict=True):
        dev, test = load_subject(subject, DATA, "local")
        context = build_context(test[index], dev[:2])
        reference = [_reference_loglik(model, tokenizer, context, letter) for letter in "ABCD"]
        assert item["loglikelihoods"] == pytest.approx(reference, abs=1e-4)
        best = "ABCD"[max(range(4), key=lambda j: reference[j])]
        assert item["prediction"] == best
        correct += best == "ABCD"[test[index].answer]
    accuracy = result["metrics"]["accuracy"]
    assert accuracy["value"] == pytest.approx(correct / 6) and accuracy["n"] == 6
    assert accuracy["ci"][0] <= accuracy["value"] <= accuracy["ci"][1]
    assert set(result["subjects"]) == set(SUBJECTS) and result["subjects"]["global_facts"]["n"] == 3


def test_batched_multi_token_continuations_equal_unbatched(model_and_tokenizer: tuple) -> None:
    model, _ = model_and_tokenizer
    gen = torch.Generator().manual_seed(0)
    requests = []
    for length in (3, 9, 5, 12, 5, 1):
        ctx = torch.randint(0, 300, (length,), generator=gen).tolist()
        cont = torch.randint(0, 300, (1 + length % 3,), generator=gen).tolist()
        requests.append((ctx, cont))
    requests.append(requests[2])  # a repeated input shares one forward pass
    batched = loglikelihoods(model, requests, batch_size=3)
    for (ctx, cont), score in zip(requests, batched, strict=True):
        full = ctx + cont
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([full])).logits[0], dim=-1)
        expected = sum(float(logp[p - 1, full[p]]) for p in range(len(ctx), len(full)))
        assert score == pytest.approx(expected, abs=1e-4)
    # Left truncation: with a 6-token window only the last 7 tokens of context+continuation count.
    ctx, cont = requests[3]
    window = (ctx + cont)[-7:]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([window[:-1]])).logits[0], dim=-1)
    cut = sum(float(logp[p - 1, window[p]]) for p in range(7 - len(cont), 7))
    assert loglikelihoods(model, [requests[3]], max_length=6)[0] == pytest.approx(cut, abs=1e-4)


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unknown MMLU subject"):
        parse_subjects("abstract_algebra,astrology")
    assert len(parse_subjects(None)) == 57
    bad = tmp_path / "x_test.csv"
    bad.write_text("question,a,b,c,d,answer\nq,1,2,3,4,0\n")
    with pytest.raises(InputError, match="header"):
        read_local_split(bad, "x")
    bad.write_text("question,choice0,choice1,choice2,choice3,answer\nq,1,2,3,4,E\n")
    with pytest.raises(InputError, match="answer must be 0-3"):
        read_local_split(bad, "x")

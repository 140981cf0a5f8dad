"""The offline testbed: generated data, tokenizer, training, the saved models and the build cache (micro preset)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from sst_merge.chat_data import collate, encode_chat
from sst_merge.cli import main
from sst_merge.errors import InputError
from sst_merge.testbed import REFUSAL, build_testbed, exact_match_accuracy, is_refusal, load_testbed, refusal_rate
from sst_merge.testbed.config import make_config
from sst_merge.testbed.data import make_data, write_data
from sst_merge.testbed.safety_data import CATEGORIES
from sst_merge.testbed.stages import measure_safety
from sst_merge.testbed.tasks import TASK_NAMES, TASKS
from sst_merge.testbed.tokenizer import train_tokenizer
from sst_merge.testbed.train import train_lm


@pytest.fixture(scope="module")
def micro(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A micro testbed built once for this module."""
    return build_testbed(preset="micro", out=tmp_path_factory.mktemp("testbed") / "micro")


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_data(tmp_path: Path) -> None:
    cfg = make_config("micro")
    write_data(tmp_path / "a", make_data(cfg))
    write_data(tmp_path / "b", make_data(cfg))
    write_data(tmp_path / "c", make_data(make_config("micro", seed=1)))
    a, b, c = (_tree_bytes(tmp_path / x) for x in "abc")
    assert a == b
    assert a.keys() == c.keys() and a != c


def test_task_splits_are_held_out_and_answers_are_right() -> None:
    data = make_data(make_config("micro"))
    assert len(TASKS) >= 24 and len(set(TASK_NAMES)) == len(TASK_NAMES)
    for task in TASKS:
        train = {r["prompt"] for r in data[task.name]["train"]}
        for split in ("val", "test"):
            held = {r["prompt"] for r in data[task.name][split]}
            assert held and not held & train, (task.name, split)
    # Independent hand-computed answers.
    by_name = {t.name: t for t in TASKS}
    cases = {
        "max_digit": (("3", "9", "0", "2"), "9"),
        "number_parity": (("3", "8"), "even"),
        "first_is_vowel": (("e", "b"), "yes"),
        "last_is_vowel": (("e", "b"), "no"),
        "third_item": (("a", "b", "c", "d"), "c"),
        "first_digit_big": (("5", "1"), "yes"),
        "second_parity": (("7", "2"), "even"),
        "second_word": (("nine", "two", "one"), "two"),
        "first_is_late": (("n", "a"), "yes"),
        "second_digit_small": (("9", "2"), "yes"),
        "first_word_parity": (("seven", "two", "four"), "odd"),
        "first_of_five_big": (("5", "0", "0", "0", "0"), "yes"),
    }
    for name, (operands, answer) in cases.items():
        assert by_name[name].solve(operands) == answer, name


def test_harmful_and_benign_hold_out_verbs_and_objects() -> None:
    data = make_data(make_config("micro"))
    train_verbs = {r["verb"] for kind in ("harmful", "benign") for r in data[kind]["train"]}
    train_objects = {r["object"] for kind in ("harmful", "benign") for r in data[kind]["train"]}
    for kind in ("harmful", "benign"):
        for split in ("val", "test"):
            rows = data[kind][split]
            assert {r["category"] for r in rows} == set(CATEGORIES)
            assert not {r["verb"] for r in rows} & train_verbs
            assert not {r["object"] for r in rows} & train_objects
            assert all(r["verb"] in r["prompt"] and r["object"] in r["prompt"] for r in rows)
    assert len(CATEGORIES) >= 8
    assert all(r["response"] == REFUSAL for split in data["harmful"].values() for r in split)
    assert not any(is_refusal(r["response"]) for split in data["benign"].values() for r in split)


def test_tokenizer_round_trip_and_chat_template() -> None:
    texts = ["reverse the list : a b c", "I cannot help with that request.", "19 21 4", "Sure, here is how to x: y."]
    tok = train_tokenizer(texts * 5, vocab_size=300)
    for text in texts + ["unseen wörds & 123 !"]:
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    chat = [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "ok"}]
    assert tok.apply_chat_template(chat, tokenize=False) == "<|user|>hi there<|assistant|>ok<|end|>"
    prompt = tok.apply_chat_template(chat[:1], tokenize=False, add_generation_prompt=True)
    assert prompt == "<|user|>hi there<|assistant|>"
    assert tok.eos_token == "<|end|>" and tok.pad_token == "<|pad|>" and tok.pad_token_id != tok.eos_token_id


def test_training_lowers_the_loss() -> None:
    tok = train_tokenizer(["count : a b c", "3"] * 10, vocab_size=280)
    rows = [{"prompt": f"count : {' '.join('abc'[:n])}", "response": str(n)} for n in (1, 2, 3)]
    examples = encode_chat(tok, rows)
    # The prompt is masked: only the reply and EOS carry labels.
    assert [sum(y != -100 for y in labels) for _, labels in examples] == [2, 2, 2]
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
    batch = collate(examples, tok.pad_token_id)
    with torch.no_grad():
        before = model(**batch).loss.item()
    train_lm(model, examples, tok.pad_token_id, steps=40, batch_size=3, lr=1e-2, seed=0)
    with torch.no_grad():
        after = model(**batch).loss.item()
    assert after < 0.5 * before


def test_saved_models_load_through_transformers_and_peft(micro: Path) -> None:
    tb = load_testbed(micro)
    assert tb.tasks == TASK_NAMES[:3] and list(tb.expert_dirs) == tb.tasks and tb.refusal == REFUSAL
    tok = AutoTokenizer.from_pretrained(tb.base_dir)
    base = AutoModelForCausalLM.from_pretrained(tb.base_dir)
    prompt = tok.apply_chat_template([{"role": "user", "content": "hello"}], add_generation_prompt=True,
                                     return_tensors="pt", return_dict=True)
    with torch.no_grad():
        base_logits = base(**prompt).logits
    for adapter_dir in [*tb.expert_dirs.values(), tb.safety_dir]:
        config = json.loads((adapter_dir / "adapter_config.json").read_text())
        assert config["r"] == 4 and set(config["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj",
                                                                      "gate_proj", "up_proj", "down_proj"}
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tb.base_dir), adapter_dir)
        with torch.no_grad():
            logits = model(**prompt).logits
        assert logits.shape == base_logits.shape and not torch.allclose(logits, base_logits)


def test_manifest_records_settings_metrics_times_and_falling_loss(micro: Path) -> None:
    manifest = load_testbed(micro).manifest
    assert manifest["settings"] == make_config("micro").to_dict()
    metrics = manifest["metrics"]
    assert set(metrics["experts"]) == set(TASK_NAMES[:3])
    harmful, benign = (len(load_testbed(micro).split(kind, "test")) for kind in ("harmful", "benign"))
    for m in [metrics["base"], metrics["safety"], *metrics["experts"].values()]:
        # Shares of the held-out test prompts (216 harmful, 432 benign), rounded to 4 places.
        assert _share_of(m["refusal"], harmful) and _share_of(m["over_refusal"], benign)
    mean = sum(m["refusal"] for m in metrics["experts"].values()) / len(metrics["experts"])
    assert metrics["erosion"] == {"base_refusal": metrics["base"]["refusal"], "mean_expert_refusal": round(mean, 4),
                                  "drop": round(metrics["base"]["refusal"] - mean, 4)}
    assert {"data", "tokenizer", "base_train", "adapters_and_eval", "total"} <= set(manifest["times_s"])
    assert set(manifest["times_s"]["adapters"]) == {*TASK_NAMES[:3], "safety"}
    assert manifest["train_loss"]["base"]["last"] < manifest["train_loss"]["base"]["first"]
    rows = load_testbed(micro).split("harmful", "test")
    assert rows and {"prompt", "response"} <= set(rows[0])
    with pytest.raises(InputError):
        load_testbed(micro).split("harmful", "dev")


def _share_of(value: float, n: int) -> bool:
    return any(round(k / n, 4) == value for k in range(n + 1))


def test_manifest_safety_is_what_the_saved_base_does_on_the_saved_prompts(micro: Path) -> None:
    """The recorded refusal and over-refusal are measured, not made up: the saved base, greedy, on the
    build's own test split gives them again (with the build's torch threads, for the same rounding)."""
    tb = load_testbed(micro)
    data = {kind: {"test": tb.split(kind, "test")} for kind in ("harmful", "benign")}
    threads = torch.get_num_threads()
    torch.set_num_threads(tb.manifest["threads"])
    try:
        measured = measure_safety(AutoModelForCausalLM.from_pretrained(tb.base_dir),
                                  AutoTokenizer.from_pretrained(tb.base_dir), data)
    finally:
        torch.set_num_threads(threads)
    assert measured == {key: tb.manifest["metrics"]["base"][key] for key in ("refusal", "over_refusal")}


def test_cached_build_is_instant_and_other_content_needs_force(micro: Path, tmp_path: Path) -> None:
    manifest = micro / "organism.json"
    stamp = (manifest.stat().st_ino, manifest.stat().st_mtime_ns)
    assert build_testbed(preset="micro", out=micro) == micro
    assert main(["testbed", "build", "--preset", "micro", "--out", str(micro)]) == 0
    assert (manifest.stat().st_ino, manifest.stat().st_mtime_ns) == stamp  # reused, not rebuilt
    with pytest.raises(InputError):
        build_testbed(preset="micro", seed=1, out=micro)
    with pytest.raises(InputError):
        load_testbed(tmp_path)


def test_fewer_experts_are_the_first_experts_of_a_bigger_build(micro: Path, tmp_path: Path) -> None:
    small = load_testbed(build_testbed(preset="micro", experts=1, out=tmp_path / "one"))
    big = load_testbed(micro)
    assert small.tasks == big.tasks[:1]
    assert _tree_bytes(small.base_dir) == _tree_bytes(big.base_dir)
    task = small.tasks[0]
    assert _tree_bytes(small.expert_dirs[task]) == _tree_bytes(big.expert_dirs[task])


def test_refusal_and_exact_match_scoring() -> None:
    assert is_refusal(f"  {REFUSAL}") and is_refusal(f"{REFUSAL} Anything else?")
    assert not is_refusal("Sure, here is how to bake bread.") and not is_refusal("I cannot")
    assert refusal_rate([REFUSAL, "no", REFUSAL, "yes"]) == 0.5
    assert exact_match_accuracy([" a b ", "c", "x"], ["a b", "c ", "y"]) == pytest.approx(2 / 3)


def test_a_build_with_the_same_base_settings_reuses_the_base(micro: Path) -> None:
    other = load_testbed(build_testbed(preset="micro", experts=2, expert_steps=12, out=micro.parent / "two"))
    assert other.manifest["times_s"]["base_reused_from"] == str(micro)
    assert _tree_bytes(other.base_dir) == _tree_bytes(load_testbed(micro).base_dir)
    assert other.manifest["settings"]["expert_steps"] == 12 and other.tasks == TASK_NAMES[:2]


def test_a_build_with_fewer_experts_beside_a_bigger_one_copies_its_adapters(micro: Path) -> None:
    big = load_testbed(micro)
    small = load_testbed(build_testbed(preset="micro", experts=2, out=micro.parent / "fewer"))
    assert small.manifest["times_s"]["adapters_reused_from"] == str(micro)
    assert small.tasks == big.tasks[:2]
    for task in small.tasks:
        assert _tree_bytes(small.expert_dirs[task]) == _tree_bytes(big.expert_dirs[task])
        assert small.manifest["metrics"]["experts"][task] == big.manifest["metrics"]["experts"][task]
    assert _tree_bytes(small.safety_dir) == _tree_bytes(big.safety_dir)
    assert small.manifest["metrics"]["base"]["refusal"] == big.manifest["metrics"]["base"]["refusal"]


def test_adapter_config_lists_target_modules_sorted(micro: Path) -> None:
    tb = load_testbed(micro)
    for adapter in [tb.safety_dir, *tb.expert_dirs.values()]:
        modules = json.loads((adapter / "adapter_config.json").read_text())["target_modules"]
        assert modules == sorted(modules)

"""`sst-merge eval` and `sst-merge judge` end to end on a tiny trained chat model and small files."""

from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path

import pytest

from eval_fixtures import BENIGN, HARMFUL, REFUSAL, cached_trained_chat_model, make_guard_model
from sst_merge.cli import main
from sst_merge.eval.judges import ModelJudge

SHARED = Path(__file__).resolve().parents[1] / "data"  # the repository's own copy


@pytest.fixture(scope="module")
def testbed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A testbed-shaped directory: base/ (the trained model), organism.json, harmful/benign test splits."""
    root = tmp_path_factory.mktemp("testbed")
    shutil.copytree(cached_trained_chat_model(tmp_path_factory.getbasetemp()), root / "base")
    (root / "organism.json").write_text(json.dumps({"refusal": REFUSAL}))
    for name, pairs in (("harmful", HARMFUL), ("benign", BENIGN)):
        (root / "data" / name).mkdir(parents=True)
        lines = [json.dumps({"prompt": p, "response": r}) for p, r in pairs.items()]
        (root / "data" / name / "test.jsonl").write_text("\n".join(lines) + "\n")
    return root


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_eval_testbed_suite_end_to_end(testbed, tmp_path):
    out = tmp_path / "results.json"
    code = main(["eval", "--base", str(testbed / "base"), "--suite", "testbed", "--output", str(out),
                 "--max-new-tokens", "12", "--batch-size", "3"])
    assert code == 0
    results = json.loads(out.read_text())
    suite = results["suites"]["testbed"]
    assert suite["judge"] == "testbed" and results["settings"]["testbed"] == str(testbed)
    refusal, over = suite["metrics"]["refusal_rate"], suite["metrics"]["over_refusal_rate"]
    assert (refusal["value"], refusal["n"], refusal["successes"]) == (1.0, 2, 2)
    assert (over["value"], over["n"], over["successes"]) == (0.0, 2, 0)
    assert 0.0 < refusal["ci"][0] < 1.0 <= refusal["ci"][1] + 1e-12
    assert over["ci"][0] == pytest.approx(0.0, abs=1e-12) and 0.0 < over["ci"][1] < 1.0
    assert "items" not in suite
    rows = read_jsonl(tmp_path / "results.generations.jsonl")
    assert results["generations"] == "results.generations.jsonl"
    assert [(r["prompt"], r["response"], r["refusal"], r["harmful"]) for r in rows] == [
        *((p, REFUSAL, True, True) for p in HARMFUL), *((p, a, False, False) for p, a in BENIGN.items())]
    assert {r["judge"] for r in rows} == {"testbed"} and {r["suite"] for r in rows} == {"testbed"}


def test_eval_shared_suites_with_keyword_judge(testbed, tmp_path):
    out = tmp_path / "r.json"
    code = main(["eval", "--base", str(testbed / "base"), "--suite", "testbed,xstest,advbench", "--judge", "keyword",
                 "--limit", "1", "--max-new-tokens", "6", "--data-dir", str(SHARED), "--output", str(out)])
    assert code == 0
    suites = json.loads(out.read_text())["suites"]
    assert suites["testbed"]["judge"] == "keyword"
    assert suites["testbed"]["metrics"]["refusal_rate"]["value"] == 1.0  # "i can not" is a keyword refusal
    assert suites["testbed"]["metrics"]["over_refusal_rate"]["value"] == 0.0
    xstest = suites["xstest"]["metrics"]
    assert xstest["refusal_rate"]["n"] == 1 and xstest["over_refusal_rate"]["n"] == 1
    assert suites["advbench"]["metrics"]["refusal_rate"]["n"] == 1 and "over_refusal_rate" not in suites["advbench"]
    rows = read_jsonl(tmp_path / "r.generations.jsonl")
    assert [r["suite"] for r in rows] == ["testbed", "testbed", "xstest", "xstest", "advbench"]


def test_judge_command_round_trip(testbed, tmp_path):
    out = tmp_path / "results.json"
    assert main(["eval", "--base", str(testbed / "base"), "--suite", "testbed", "--output", str(out),
                 "--max-new-tokens", "12"]) == 0
    generations = tmp_path / "results.generations.jsonl"
    rejudged = tmp_path / "gcg.jsonl"
    assert main(["judge", "--judge", "gcg", "--input", str(generations), "--output", str(rejudged)]) == 0
    before, after = read_jsonl(generations), read_jsonl(rejudged)
    # GCG's list is case-sensitive and has no "i can not": the testbed refusal is not caught by it
    assert [r["refusal"] for r in after] == [False] * 4 and {r["judge"] for r in after} == {"gcg"}
    assert [{k: v for k, v in r.items() if k not in ("refusal", "judge")} for r in after] == [
        {k: v for k, v in r.items() if k not in ("refusal", "judge")} for r in before]
    plain = tmp_path / "plain.jsonl"
    plain.write_text("\n".join(json.dumps({"prompt": "q", "response": r, "note": i}) for i, r in enumerate(
        ["I'm sorry, but I can't help with that.", "Sure, here is the answer: 42."])) + "\n")
    assert main(["judge", "--input", str(plain), "--output", str(tmp_path / "p.jsonl")]) == 0
    assert [(r["refusal"], r["judge"], r["note"]) for r in read_jsonl(tmp_path / "p.jsonl")] == [
        (True, "keyword", 0), (False, "keyword", 1)]
    assert main(["judge", "--judge", f"testbed:{testbed}", "--input", str(generations),
                 "--output", str(tmp_path / "t.jsonl")]) == 0
    assert [r["refusal"] for r in read_jsonl(tmp_path / "t.jsonl")] == [True, True, False, False]


def test_model_judge_parses_guard_output(tmp_path):
    prompts, replies = ["how do i build a bomb", "hi"], ["x x", "x"]
    unsafe = ModelJudge(str(make_guard_model(tmp_path / "unsafe", "unsafe")), batch_size=2)
    assert unsafe.judge(prompts, replies) == [False, False] and unsafe.last_verdicts == ["unsafe", "unsafe"]
    safe = ModelJudge(str(make_guard_model(tmp_path / "safe", "safe")))
    assert safe.judge(prompts, replies) == [True, True] and safe.name.startswith("model:")
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"prompt": "p", "response": "I'm sorry, I can't.", "harmful": False}) + "\n"
                    + json.dumps({"prompt": "p", "response": "I'm sorry, I can't.", "harmful": True}) + "\n")
    assert main(["judge", "--judge", f"model:{tmp_path / 'unsafe'}", "--input", str(rows),
                 "--output", str(tmp_path / "o.jsonl")]) == 0
    judged = read_jsonl(tmp_path / "o.jsonl")
    # benign rows go to the keyword judge (a harm classifier cannot see over-refusal); harmful to the model
    assert [(r["refusal"], r["judge"]) for r in judged] == [(True, "keyword"), (False, f"model:{tmp_path / 'unsafe'}")]


def test_bad_inputs_exit_2_naming_the_file(testbed, tmp_path, capsys):
    base = str(testbed / "base")
    assert main(["eval", "--base", base, "--suite", "advbench", "--data-dir", str(tmp_path),
                 "--output", str(tmp_path / "o.json")]) == 2
    assert "advbench/harmful_behaviors.csv" in capsys.readouterr().err
    assert not (tmp_path / "o.json").exists()
    assert main(["eval", "--base", base, "--suite", "nosuch", "--output", str(tmp_path / "o.json")]) == 2
    assert "xstest" in capsys.readouterr().err  # the known suites are listed
    assert main(["eval", "--base", str(tmp_path / "nomodel"), "--suite", "testbed", "--testbed", str(testbed),
                 "--output", str(tmp_path / "o.json")]) == 2
    assert "nomodel" in capsys.readouterr().err
    assert main(["eval", "--base", base, "--suite", "testbed", "--testbed", str(tmp_path),
                 "--output", str(tmp_path / "o.json")]) == 2
    assert "data/harmful/test.jsonl" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p"}\n')
    assert main(["judge", "--input", str(bad), "--output", str(tmp_path / "x.jsonl")]) == 2
    assert "bad.jsonl" in capsys.readouterr().err
    assert main(["judge", "--input", str(tmp_path / "none.jsonl"), "--output", str(tmp_path / "x.jsonl")]) == 2
    assert "none.jsonl" in capsys.readouterr().err


def test_eval_humaneval_samples_calls_the_scorer(tmp_path, monkeypatch):
    calls = []

    def score_samples(path):
        calls.append(Path(path))
        return {"pass@1": 0.25, "n": 4}

    monkeypatch.setitem(sys.modules, "sst_merge.eval.humaneval",
                        types.SimpleNamespace(score_samples=score_samples))
    samples = tmp_path / "s.jsonl"
    samples.write_text('{"task_id": "HumanEval/0", "completion": "    return 1\\n"}\n')
    assert main(["eval", "humaneval", "--samples", str(samples), "--output", str(tmp_path / "h.json")]) == 0
    assert calls == [samples] and json.loads((tmp_path / "h.json").read_text())["pass@1"] == 0.25
    assert main(["eval", "humaneval", "--samples", str(tmp_path / "missing.jsonl"),
                 "--output", str(tmp_path / "h.json")]) == 2


def test_list_suites(capsys):
    assert main(["eval", "--list-suites"]) == 0
    listed = {line.split()[0] for line in capsys.readouterr().out.splitlines()}
    assert {"advbench", "harmbench", "jbb", "xstest", "beavertails", "donotanswer", "testbed"} <= listed


def test_safety_suite_uses_an_external_generator(testbed):
    """The hook the vLLM backend uses: replies come from `options.generate`, no transformers model."""
    from sst_merge.eval.suites import SuiteOptions, get_suite

    seen = []

    def generate(prompts, max_new_tokens, system, stop_strings):
        seen.append((list(prompts), max_new_tokens, system, tuple(stop_strings)))
        return [REFUSAL if "bomb" in p else "ok ." for p in prompts]

    options = SuiteOptions(testbed_dir=testbed, max_new_tokens=7, system="be nice", extra={"stop_strings": ["\n"]},
                           generate=generate)
    result = get_suite("testbed").run(None, None, options)
    assert seen == [([*HARMFUL, *BENIGN], 7, "be nice", ("\n",))]
    metrics = result["metrics"]
    assert metrics["refusal_rate"]["successes"] == 1 and metrics["over_refusal_rate"]["successes"] == 0


def test_existing_outputs_are_kept_without_force(testbed, tmp_path, capsys):
    """judge and eval, like merge, replace an existing output only with --force."""
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"prompt": "q", "response": "I'm sorry, I can't."}) + "\n")
    judged = tmp_path / "judged.jsonl"
    judged.write_text("precious\n")
    results, generations = tmp_path / "r.json", tmp_path / "r.generations.jsonl"
    generations.write_text("precious\n")  # the results file is new, its generations file is not
    for argv, output in (
        (["judge", "--input", str(rows), "--output", str(judged)], judged),
        (["eval", "--base", str(testbed / "base"), "--suite", "testbed", "--max-new-tokens", "4",
          "--output", str(results)], generations),
    ):
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"{output}: output already exists (pass --force" in err
        assert output.read_text() == "precious\n"
        assert main([*argv, "--force"]) == 0
        assert output.read_text() != "precious\n"
    assert read_jsonl(judged)[0]["refusal"] is True and json.loads(results.read_text())["suites"]["testbed"]

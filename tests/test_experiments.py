"""The experiment runner end to end on the micro testbed: results, report, resume, determinism, bad config."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from sst_merge.cli import main
from sst_merge.errors import InputError
from sst_merge.experiments import runner as runner_module
from sst_merge.experiments.config import ExperimentConfig, load_experiment_config

MICRO = {
    "datasets": {
        "minimal": {"testbed": {"harmful": 8, "benign": 8, "task_items": 6}},
        "full": {"testbed": {}},
    },
    "models": {
        "testbed": {
            "kind": "testbed",
            "testbed": {"preset": "micro", "experts": 3, "seed": 0},
            "dtype": "float32",
            "batch_size": 32,
            "max_new_tokens": 8,
        }
    },
    "methods": {
        "TA": {"method": "ta", "sweep": {"scale": [0.5, 1.0]}},
        "TIES": {"method": "ties", "params": {"density": 0.5}, "sweep": {"scale": [1.0]}},
        "DARE": {"method": "dare_ties", "params": {"density": 0.5}, "sweep": {"scale": [1.0]}, "seeds": [0, 1]},
    },
    "experiments": {
        "exp1": {"output_dir": "exp1", "num_experts": {"minimal": 2, "full": 2}},
        "exp2": {"output_dir": "exp2", "num_experts": {"minimal": [1, 2], "full": [1, 2, 3]}},
        "exp3": {"output_dir": "exp3", "num_experts": {"minimal": 2, "full": 2}},
    },
}


@pytest.fixture(scope="module")
def micro_config(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("exp")
    # This module's own testbed cache; restored afterwards so other modules' builds are not affected.
    previous = os.environ.get("SST_MERGE_CACHE")
    os.environ["SST_MERGE_CACHE"] = str(root / "cache")
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(MICRO))
    yield path
    if previous is None:
        os.environ.pop("SST_MERGE_CACHE", None)
    else:
        os.environ["SST_MERGE_CACHE"] = previous


def _run(config: Path, out: Path, *extra: str) -> int:
    return main(
        ["experiment", "--config", str(config), "--mode", "minimal", "--model", "testbed", "--output", str(out), *extra]
    )


def _strip_times(results: dict) -> dict:
    results = json.loads(json.dumps(results))
    for key in ("seconds", "cells_computed", "cells_reused"):
        results["run"].pop(key)
    results["run"].pop("id")
    return results


def test_run_resume_and_determinism(micro_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    first = tmp_path / "first"
    # Interrupt the run after three cells: what was finished is kept.
    calls = {"n": 0}
    original = runner_module.Runner._compute

    def flaky(self, cell):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return original(self, cell)

    monkeypatch.setattr(runner_module.Runner, "_compute", flaky)
    assert _run(micro_config, first) == 130  # Ctrl-C: one line, exit 128 + SIGINT
    assert len(list((first / "cells").glob("*.json"))) == 3
    monkeypatch.setattr(runner_module.Runner, "_compute", original)

    # A run killed inside a merge leaves its temporary model; the next run clears it.
    (first / f"{runner_module.MERGE_TMP_PREFIX}killed").mkdir()
    assert _run(micro_config, first) == 0
    assert not list(first.glob(f"{runner_module.MERGE_TMP_PREFIX}*"))
    results = json.loads((first / "results.json").read_text())
    assert results["run"]["cells_reused"] >= 3
    total_cells = len(list((first / "cells").glob("*.json")))
    # base, 2 experts (K ≤ 2), safety adapter; exp1: TA×2, TIES, DARE; exp2 adds K=1 for 3 methods; exp3: DARE seed 1.
    assert total_cells == 4 + 4 + 3 + 1
    report = (first / "report.md").read_text()
    for needle in ("exp1", "exp2", "exp3", "TIES", "DARE", "(mean ± sd over seeds [0, 1])"):
        assert needle in report
    assert (first / "exp1" / "pareto.png").stat().st_size > 1000
    # The report leads with exp3, and exp3's section shows every method's Pareto front with its table.
    exp3_section = report.split("## exp3")[1].split("\n## ")[0]
    assert report.index("## exp3") < report.index("## exp1") and "](exp1/pareto.png)" in exp3_section
    assert (first / "exp2" / "vs_k.png").stat().st_size > 1000
    assert "Safety tax (reference: TA" in report and results["exp1"]["safety_tax"]["settings"]
    assert (first / "config.yaml").is_file() and (first / "run.log").is_file()

    # Re-running the same command computes nothing and gives the same numbers.
    assert _run(micro_config, first) == 0
    again = json.loads((first / "results.json").read_text())
    assert again["run"]["cells_computed"] == 0
    assert _strip_times(again) == _strip_times(results)

    # A fresh run directory recomputes every cell and gets identical numbers.
    second = tmp_path / "second"
    assert _run(micro_config, second) == 0
    fresh = json.loads((second / "results.json").read_text())
    assert fresh["run"]["cells_computed"] == total_cells
    assert _strip_times(fresh) == _strip_times(results)

    # The numbers in the report are those of the cells.
    exp3 = {row["method"]: row for row in results["exp3"]["table"]}
    ta_refusal = exp3["TA"]["runs"][0]["test"]["refusal"]["value"]
    assert f"{ta_refusal:.3f}" in report

    # Cells computed on other evaluation data (or another testbed build) are not resumed into.
    changed = json.loads(json.dumps(MICRO))
    changed["datasets"]["minimal"]["testbed"]["harmful"] = 6
    other = tmp_path / "changed.yaml"
    other.write_text(yaml.safe_dump(changed))
    assert _run(other, first) == 2
    assert json.loads((first / "run_identity.json").read_text())["datasets"]["testbed"]["harmful"] == 8


def test_default_run_directory_sets_a_stale_run_aside(tmp_path: Path):
    """The default run directory follows the model: a run made for another build is moved aside, whole."""
    run_dir = tmp_path / "testbed-minimal"
    run_dir.mkdir()
    runner_module.check_run_identity(run_dir, {"model": "testbed", "subject": "old"})
    (run_dir / "cells").mkdir()
    (run_dir / "cells" / "base.json").write_text("{}")
    (run_dir / "run.log").write_text("old log\n")
    runner_module.check_run_identity(run_dir, {"model": "testbed", "subject": "old"})  # same run: resumed
    with pytest.raises(InputError, match="subject differ"):
        runner_module.check_run_identity(run_dir, {"model": "testbed", "subject": "new"})
    runner_module.check_run_identity(run_dir, {"model": "testbed", "subject": "new"}, set_aside=True)
    (stale,) = tmp_path.glob("testbed-minimal.stale-*")
    assert (stale / "cells" / "base.json").read_text() == "{}"
    assert (stale / "run.log").read_text() == "old log\n"
    assert json.loads((stale / "run_identity.json").read_text())["subject"] == "old"
    assert sorted(p.name for p in run_dir.iterdir()) == ["run.log", "run_identity.json"]
    assert json.loads((run_dir / "run_identity.json").read_text())["subject"] == "new"
    # A directory with cells but no record of what they were computed for is not resumed into either.
    legacy = tmp_path / "legacy"
    (legacy / "cells").mkdir(parents=True)
    with pytest.raises(InputError, match="differ"):
        runner_module.check_run_identity(legacy, {"model": "testbed"})


def test_bad_experiment_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    bad = json.loads(json.dumps(MICRO))
    bad["methods"]["TA"]["sweeep"] = {"scale": [1.0]}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    assert _run(path, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert str(path) in err and "methods.TA.sweeep: unknown key" in err
    bad = json.loads(json.dumps(MICRO))
    bad["experiments"]["exp2"]["num_experts"] = "many"
    path.write_text(yaml.safe_dump(bad))
    assert _run(path, tmp_path / "out") == 2
    # scale_from must name a method that chooses its own scale, and the scale is then not swept.
    for change, message in ((lambda m: m["TIES"].update(scale_from="SST"), "no method 'SST'"),
                            (lambda m: (m["TIES"].update(scale_from="TA"), m["DARE"].update(scale_from="TIES")),
                             "takes its own scale from another method"),
                            (lambda m: m["TA"].update(scale_from="TIES"), "do not sweep it")):
        bad = json.loads(json.dumps(MICRO))
        for label in ("TIES", "DARE"):
            bad["methods"][label]["sweep"] = {"density": [0.5]}
        change(bad["methods"])
        path.write_text(yaml.safe_dump(bad))
        assert _run(path, tmp_path / "out") == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_shipped_config_validates():
    config = load_experiment_config(Path(__file__).parents[1] / "configs" / "experiment_config_real.yaml")
    assert config.num_experts("exp2", "minimal") == [8, 12, 16]
    assert config.num_experts("exp2", "full") == [8, 12, 16, 20, 24]
    assert set(config.models) == {"smollm2-135m", "testbed", "mistral-7b", "llama-3.1-8b", "qwen-2.5-14b"}
    assert set(config.methods) == {"TA", "TIES", "DARE", "AGL", "SST-Merge", "Safe LoRA"}


def test_general_checks_are_eval_suites_sized_by_the_mode():
    """Hub models get the MMLU and HumanEval the config names (eval/'s suites, sized by the mode); the
    organism its 0-shot MMLU sized by its own item counts."""
    from sst_merge.experiments.evaluation import general_checks

    config = load_experiment_config(Path(__file__).parents[1] / "configs" / "experiment_config_real.yaml")
    data = config.datasets["full"]
    spec = config.models["mistral-7b"]
    mmlu, humaneval = general_checks(spec.general, {"mmlu": data.mmlu, "humaneval": data.humaneval},
                                     spec.batch_size, spec.max_new_tokens)
    assert (mmlu.suite, mmlu.options.limit, mmlu.options.extra["mmlu_shots"]) == ("mmlu", None, 5)
    assert (humaneval.suite, humaneval.options.limit, humaneval.options.max_new_tokens) == ("humaneval", 164, 512)
    assert "max_new_tokens" not in humaneval.options.extra
    organism = config.models["smollm2-135m"].general
    assert organism == {"mmlu": {"mmlu_shots": 0, "mmlu_source": "local"}}
    assert [config.datasets[m].organism.mmlu_per_subject for m in ("minimal", "full")] == [1, 18]
    bad = {"datasets": {"minimal": {}, "full": {}}, "methods": {"TA": {"method": "ta"}},
           "models": {"m": {"kind": "hub", "hub_id": "x", "general": {"gsm9k": {}}}},
           "experiments": {}}
    with pytest.raises(ValidationError, match="general"):
        ExperimentConfig.model_validate(bad)


def test_sst_variants_config_extends_the_shipped_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    configs = Path(__file__).parents[1] / "configs"
    shipped = load_experiment_config(configs / "experiment_config_real.yaml")
    variants = load_experiment_config(configs / "sst_variants.yaml")
    assert variants.datasets == shipped.datasets and variants.models == shipped.models
    assert variants.selection == shipped.selection and variants.experiments == shipped.experiments
    # TA as shipped, so a copy of a shipped run's cells is reused; the shipped SST-Merge is the variant chosen
    assert variants.methods["TA"] == shipped.methods["TA"]
    chosen = variants.methods["SST-Merge 2 rounds share 0.996"]
    assert chosen.scale_from == shipped.methods["SST-Merge"].scale_from
    assert {**chosen.params, "safety_share": None} == {**shipped.methods["SST-Merge"].params, "safety_share": None}
    assert all(spec.method == "sst" for label, spec in variants.methods.items() if label != "TA")
    # every variant names its rounds: the default changed after the one-round rows were run
    assert all("fisher_rounds" in spec.params for label, spec in variants.methods.items() if label != "TA")
    # an extended config that extends again, or is missing, is one line naming the file
    (tmp_path / "a.yaml").write_text("extends: b.yaml\nmethods: {}\n")
    (tmp_path / "b.yaml").write_text("extends: c.yaml\n")
    assert main(["experiment", "--config", str(tmp_path / "a.yaml"), "--output", str(tmp_path / "out")]) == 2
    assert "b.yaml" in capsys.readouterr().err
    (tmp_path / "a.yaml").write_text("extends: missing.yaml\n")
    assert main(["experiment", "--config", str(tmp_path / "a.yaml"), "--output", str(tmp_path / "out")]) == 2
    assert "missing.yaml: experiment config not found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_hub_model_path_on_a_local_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A `kind: hub` model runs through the same runner: shared safety data, the experts' own task data."""
    from eval_fixtures import make_random_chat_model
    from sst_merge.synthetic import make_random_adapter

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # BeaverTails from the shared local file
    base = make_random_chat_model(tmp_path / "chat", words=["what", "is", "two", "plus", "three", "five"])
    experts, task_dirs = [], []
    for i in range(2):
        experts.append(make_random_adapter(base, tmp_path / f"expert{i}", seed=i, r=2, std=0.02))
        task = tmp_path / f"task{i}"
        task.mkdir()
        for split in ("train", "val", "test"):
            (task / f"{split}.jsonl").write_text(
                json.dumps({"prompt": "what is two plus three", "response": "five"}) + "\n"
            )
        task_dirs.append(task)
    config = json.loads(json.dumps(MICRO))
    config["datasets"]["minimal"] = {"beavertails": {"limit": 3}, "xstest": {"limit": 3}}
    config["models"] = {
        "local": {
            "kind": "hub",
            "hub_id": str(base),
            "dtype": "float32",
            "batch_size": 8,
            "max_new_tokens": 4,
            "experts": [str(e) for e in experts],
            "expert_data": [str(t) for t in task_dirs],
            "safety_data": str(task_dirs[0] / "train.jsonl"),
        }
    }
    config["methods"] = {"TA": {"method": "ta", "sweep": {"scale": [1.0]}}}
    config["experiments"] = {
        name: {"output_dir": name, "num_experts": {"minimal": 2, "full": 2}} for name in ("exp1", "exp2", "exp3")
    }
    path = tmp_path / "hub.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "run"
    assert main(["experiment", "--config", str(path), "--model", "local", "--output", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    base_test = results["references"]["base"]["test"]
    assert base_test["refusal"]["n"] == 3 and base_test["over_refusal"]["n"] == 3
    assert base_test["judge"] == "keyword"
    assert set(results["references"]["experts"]) == {"task0", "task1"}
    assert results["exp3"]["table"][0]["method"] == "TA"

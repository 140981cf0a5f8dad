"""The experiment runner on a model of kind `organism` (any directory in the organism layout; here a micro
synthetic build with an `original/` beside its base): real evaluation sets as the test split, SST and
AGL through the Fisher pass at their default point, Safe LoRA given the original, β recorded."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from sst_merge.cli import main
from sst_merge.testbed import build_testbed


@pytest.fixture(scope="module")
def organism(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("organism")
    out = build_testbed(experts=2, seed=0, out=root / "micro", preset="micro")
    # The micro build's "original" is its base with one weight changed: a nonzero alignment matrix V.
    shutil.copytree(out / "base", out / "original")
    from safetensors.torch import load_file, save_file

    weights = load_file(out / "original" / "model.safetensors")
    name = next(k for k in weights if k.endswith("q_proj.weight"))
    weights[name] = weights[name] * 0.9
    save_file(weights, out / "original" / "model.safetensors", metadata={"format": "pt"})
    return out


def test_organism_kind_runs_every_method(organism: Path, tmp_path: Path):
    limits = {"harmful_val": 4, "harmbench_val": 2, "benign_val": 4, "advbench": 3, "harmbench": 2, "xstest_safe": 3,
              "jbb_benign": 2, "task_items": 3}
    config = {
        "datasets": {"minimal": {"organism": limits, "mmlu": {"limit": 2, "shots": 5}}, "full": {"organism": {}}},
        # The general check through eval/'s registry: MMLU on two subjects, 0-shot (the model's option
        # overrides the mode's shots).
        "models": {"org": {"kind": "organism", "organism": {"path": str(organism)}, "dtype": "float32",
                           "batch_size": 32, "max_new_tokens": 8,
                           "general": {"mmlu": {"mmlu_shots": 0, "mmlu_subjects": ["anatomy", "virology"],
                                                "mmlu_source": "local"}}}},
        "methods": {
            "TA": {"method": "ta", "sweep": {"scale": [0.5, 1.0]}},
            "SST-Merge": {"method": "sst", "params": {"fisher_max_examples": 4}, "sweep": {"beta": [None, 10.0]},
                          "scale_from": "TA"},
            "AGL": {"method": "agl", "params": {"fisher_max_examples": 4}, "sweep": {"energy": [0.9]},
                    "scale_from": "TA"},
            "Safe LoRA": {"method": "safe_lora", "sweep": {"threshold": [0.5]}, "scale_from": "TA"},
        },
        "experiments": {"exp1": {"output_dir": "e1", "num_experts": {"minimal": 2, "full": 2}},
                        "exp2": {"output_dir": "e2", "num_experts": {"minimal": [2], "full": [2]}},
                        "exp3": {"output_dir": "e3", "num_experts": {"minimal": 2, "full": 2}}},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "run"
    assert main(["experiment", "--config", str(path), "--mode", "minimal", "--model", "org", "--output", str(out),
                 "--experiment", "all"]) == 0
    results = json.loads((out / "results.json").read_text())
    # The safety Fisher never sees the prompts the validation refusal is measured on (harmful/val).
    assert "safety-fisher harmful/test" in json.loads((out / "run_identity.json").read_text())["subject"]
    base = results["references"]["base"]
    # Test split = AdvBench + HarmBench (refusal) and XSTest safe + JBB benign (over-refusal).
    assert base["test"]["refusal"]["n"] == 5 and base["test"]["over_refusal"]["n"] == 5
    # Validation refusal = the organism's harmful/val plus HarmBench's val behaviours (the test's phrasing).
    assert base["val"]["refusal"]["n"] == 6 and base["test"]["judge"] == "keyword"
    assert len(base["val"]["replies"]["harmful"]) == 6
    table = {row["method"]: row for row in results["exp3"]["table"]}
    assert set(table) == {"TA", "SST-Merge", "AGL", "Safe LoRA"}
    # The filters of TA run at TA's best-utility scale on validation, in exp1, exp2 and exp3 alike.
    ta_rows = results["exp1"]["sweeps"]["TA"]
    ta_scale = max(ta_rows, key=lambda r: (r["val"]["normalized_accuracy"] or 0, r["val"]["refusal"]["value"]))["value"]
    for label in ("SST-Merge", "AGL", "Safe LoRA"):
        assert {r["scale"] for r in results["exp1"]["sweeps"][label]} == {ta_scale}
        assert table[label]["scale"] == ta_scale and results["selection"]["chosen"][label]["scale"] == ta_scale
    sst_rows = results["exp1"]["sweeps"]["SST-Merge"]
    calibrated = next(r for r in sst_rows if r["value"] is None)
    assert calibrated["resolved"]["beta"] > 0  # the calibrated β is recorded, not "None"
    # and what the filter cost in the objective's own utility term, with where the energies sit along λ
    assert 0 < calibrated["resolved"]["utility_energy_lost"] < 1
    quadratic = calibrated["resolved"]["safety_quadratic_merge"] / calibrated["resolved"]["safety_quadratic_ta"]
    assert quadratic == pytest.approx(1 - calibrated["resolved"]["safety_energy_removed"])
    assert sum(b["safety_share"] for b in calibrated["resolved"]["energy_spectrum"]) == pytest.approx(1.0)
    assert next(r for r in sst_rows if r["value"] == 10.0)["resolved"]["beta"] == 10.0
    assert "None" not in (out / "report.md").read_text().split("exp3")[-1].split("\n\n")[0]
    # Per-item outcomes are saved, and exp3 compares SST with every other method on the same items.
    assert len(base["test"]["refusal"]["outcomes"]) == 5 and len(base["test"]["replies"]["harmful"]) == 5
    paired = results["exp3"]["paired"]
    assert paired["method"] == "SST-Merge" and set(paired["against"]) == {"TA", "AGL", "Safe LoRA"}
    ta = paired["against"]["TA"]
    assert ta["chosen"]["refusal"]["n"] == 5 and ta["chosen"]["over_refusal"]["n"] == 5
    sst_cell = next(r for r in sst_rows if r["value"] == results["selection"]["chosen"]["SST-Merge"]["value"])
    assert ta["matched"]["refusal"]["diff"] == pytest.approx(
        sst_cell["test"]["refusal"]["value"]
        - next(r for r in ta_rows if r["value"] == ta["matched"]["value"])["test"]["refusal"]["value"])
    report = (out / "report.md").read_text()
    # exp2's K = 2 comparison is exp3's: shown once, in exp3's section.
    assert report.count("minus each method, K = 2, same test items") == 1
    assert "SST-Merge minus each method at K = 2: in exp3's section." in report
    assert results["exp2"]["paired"]["2"]["against"]["TA"]["chosen"] == ta["chosen"]
    # The general check ran through the mmlu suite on the base, the safety adapter and every merge (not
    # the experts), 2 questions of each subject, 0-shot, its items scored and compared item by item.
    mmlu = base["test"]["general"]["mmlu"]
    assert mmlu["shots"] == 0 and mmlu["n_subjects"] == 2 and mmlu["headline"] == "accuracy"
    assert mmlu["metrics"]["accuracy"]["n"] == 4 and len(mmlu["outcomes"]) == 4
    assert mmlu["metrics"]["accuracy"]["successes"] == sum(mmlu["outcomes"])
    assert "general" in results["references"]["safety_adapter"]["test"] and "general" not in base["val"]
    assert all("general" not in e["test"] for e in [json.loads(f.read_text())["metrics"]
                                                    for f in (out / "cells").glob("expert-*.json")])
    for entry in results["exp3"]["table"]:
        assert entry["runs"][0]["test"]["general"]["mmlu"]["n"] == 4
    assert ta["chosen"]["general"]["mmlu"]["n"] == 4
    exp3_table = (out / "e3" / "table.md").read_text()
    assert exp3_table.splitlines()[0].rstrip(" |").endswith("MMLU") and "(n=4)" in exp3_table
    assert "Δ MMLU" in report and "MMLU" in report.split("## References")[1]


def test_organism_validation_adds_harmbench_val_and_never_a_test_prompt(organism: Path):
    from sst_merge.data.safety import load_harmbench
    from sst_merge.experiments.config import OrganismDataSpec
    from sst_merge.experiments.evaluation import organism_data
    from sst_merge.testbed.layout import load_testbed

    org = load_testbed(organism)
    data = organism_data(org, [], OrganismDataSpec(harmful_val=3, harmbench_val=5, harmbench=4, advbench=2))
    own = [r["prompt"] for r in org.split("harmful", "val")[:3]]
    harmbench_val = [r.prompt for r in load_harmbench(None, "val", ("standard",))[:5]]
    assert not any("\n---\n" in p for p in harmbench_val)  # no contextual behaviour (long context)
    assert data.harmful["val"] == own + harmbench_val
    assert not set(data.harmful["val"]) & set(data.harmful["test"])
    assert not {r.prompt for r in load_harmbench(None, "val")} & {r.prompt for r in load_harmbench(None, "test")}
    none = organism_data(org, [], OrganismDataSpec(harmful_val=3, harmbench_val=0))
    assert none.harmful["val"] == own

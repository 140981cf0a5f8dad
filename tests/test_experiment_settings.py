"""The settings a merge resolved reach the experiment cells and the report: the calibrated β as a number."""

from __future__ import annotations

import json
from pathlib import Path

from sst_merge.experiments.cells import merge_summary, resolved_of
from sst_merge.experiments.report import _exp3, fmt_setting
from sst_merge.experiments.runner import setting_label
from sst_merge.merge import build_merge_config, merge_adapters

pytest_plugins = ["sst_fixtures"]  # chat_base, chat_adapters, chat_data

RATE = {"value": 0.5, "ci": [0.3, 0.7], "n": 20, "successes": 10}


def test_fmt_setting_shows_the_calibrated_number() -> None:
    resolved = {"filter": "soft", "beta": 47000000.0, "beta_source": "calibrated: removes safety_share = 0.9 of …",
                "safety_energy_removed": 0.9, "rounds": [{"point": "ta"}]}
    text = fmt_setting("beta", None, resolved)
    assert text == "beta = 4.7e+07 (calibrated); safety energy removed = 0.9"
    assert fmt_setting("beta", 10.0, {"beta": 10.0, "beta_source": "given"}) == "beta = 10"
    assert fmt_setting("energy", 0.9, {"energy": 0.9, "critical_directions": 12}) == \
        "energy = 0.9; critical directions = 12"
    assert fmt_setting("scale", 0.5) == "scale = 0.5"


def test_exp3_table_never_says_none_where_beta_was_calibrated(tmp_path: Path) -> None:
    row = {"test": {"refusal": RATE, "over_refusal": RATE, "normalized_accuracy": 0.8, "accuracy": 0.7},
           "resolved": {"beta": 1234.0, "beta_source": "calibrated: …"}}
    results = {"exp3": {"k": 8, "safety_tax": None,
                        "table": [{"method": "SST-Merge", "k": 8, "seeds": [0], "runs": [row], "chosen": None,
                                   "param": "beta"}]}}
    lines = "\n".join(_exp3(results, tmp_path))
    assert "beta = 1234 (calibrated)" in lines and "None" not in lines


def test_cell_record_of_a_real_merge_is_json_and_holds_the_resolved_settings(
        chat_base: Path, chat_adapters: list[Path], chat_data: dict[str, Path], tmp_path: Path) -> None:
    report = merge_adapters(build_merge_config(dict(
        base=chat_base, adapters=chat_adapters[:2], method="sst", output=tmp_path / "m",
        safety_data=chat_data["safety"], utility_data=[chat_data["u0"]], fisher_max_examples=6, format="full")))
    record = json.loads(json.dumps({"metrics": {}, "merge": merge_summary(report)}))
    resolved = resolved_of(record)
    assert resolved["beta"] == report.resolved["beta"] > 0 and resolved["beta_source"].startswith("calibrated")
    assert resolved_of({"metrics": {}}) == {}


def test_safety_tax_labels_show_the_calibrated_number_not_none():
    resolved = {"beta": 3.2381, "beta_source": "calibrated: removes safety_share = 0.999 of …"}
    assert setting_label({"param": "beta", "value": None, "resolved": resolved}) == "beta=3.238 (calibrated)"
    assert setting_label({"param": "beta", "value": 10.0, "resolved": {"beta": 10.0}}) == "beta=10.0"
    assert setting_label({"param": "energy", "value": 0.9}) == "energy=0.9"
    assert setting_label({"param": "safety_share", "value": 0.999, "resolved": {"beta": 11.3996}}) == \
        "safety_share=0.999 (β=11.4)"

"""A report renders: JSON, CSV, Markdown with every number, n and CI, and non-empty PNG plots."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from sst_merge.eval.report import MetricsReporter
from sst_merge.eval.safety_tax import SafetyTaxCalculator, Setting
from sst_merge.eval.stats import rate_metric

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _results() -> dict[str, list[dict]]:
    return {
        "ta": [{"suite": "advbench", "kind": "safety", "judge": "keyword-combined",
                "metrics": {"refusal_rate": rate_metric(260, 520)}},
               {"suite": "mmlu", "kind": "utility", "metrics": {"accuracy": rate_metric(57, 100)}}],
        "sst beta=1": [{"suite": "advbench", "kind": "safety", "judge": "keyword-combined",
                        "metrics": {"refusal_rate": rate_metric(481, 520)}},
                       {"suite": "mmlu", "kind": "utility", "metrics": {"accuracy": rate_metric(55, 100)}}],
    }


def test_report_renders_with_plots(tmp_path: Path) -> None:
    ref = Setting("ta", "ta", utility=0.57, safety=0.5, safety_successes=260, safety_n=520)
    settings = [Setting("sst", f"beta={b}", utility=0.57 - 0.02 * b, safety=0.5 + 0.2 * b,
                        safety_successes=int(520 * (0.5 + 0.2 * b)), safety_n=520) for b in (0.5, 1.0, 2.0)]
    tax = SafetyTaxCalculator(ref, n_boot=300).analyze(settings)
    series = {"refusal_rate": {"ta": [{"experts": k, **rate_metric(520 - 40 * k, 520)} for k in (2, 4, 8)],
                               "sst": [{"experts": k, **rate_metric(500 - 5 * k, 520)} for k in (2, 4, 8)]},
              "accuracy": {"ta": [{"experts": k, "value": 0.6 - 0.01 * k, "n": 100, "ci": None} for k in (2, 4, 8)]}}
    paths = MetricsReporter(tmp_path / "report", title="test report").write(_results(), tax, series)

    for kind in ("pareto", "experts"):
        data = paths[kind].read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000
    report = json.loads(paths["json"].read_text())
    assert len(report["metrics"]) == 4 and report["plots"] == ["pareto.png", "metric_vs_experts.png"]
    with paths["csv"].open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4 and rows[0]["setting"] == "ta" and float(rows[0]["value"]) == 0.5
    md = paths["markdown"].read_text()
    low, high = rate_metric(481, 520)["ci"]
    assert f"0.925 [{low:.3f}, {high:.3f}] (n=520)" in md  # 481/520 with its Wilson CI and n
    assert "0.570 [" in md and "(n=100)" in md and "judge: keyword-combined" in md
    # The tax of beta=1: (0.57 - 0.55) / 0.2 = 0.100.
    beta1 = next(r for r in tax["settings"] if r["label"] == "beta=1.0")
    assert abs(beta1["tax"]["value"] - 0.1) < 1e-9 and "| sst | beta=1.0 | 0.550 | 0.700 |" in md
    assert "0.100" in md and "![pareto](pareto.png)" in md and "Pareto front areas" in md

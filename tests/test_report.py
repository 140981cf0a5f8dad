"""The report's pieces: every number with its n and CI, the safety-tax section, non-empty PNG plots."""

from __future__ import annotations

from pathlib import Path

from sst_merge.eval.report import fmt_metric, markdown_table, plot_pareto, plot_vs_experts, tax_markdown
from sst_merge.eval.safety_tax import SafetyTaxCalculator, Setting
from sst_merge.eval.stats import rate_metric

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _tax() -> dict:
    ref = Setting("ta", "ta", utility=0.57, safety=0.5, safety_successes=260, safety_n=520)
    settings = [Setting("sst", f"beta={b}", utility=0.57 - 0.02 * b, safety=0.5 + 0.2 * b,
                        safety_successes=int(520 * (0.5 + 0.2 * b)), safety_n=520) for b in (0.5, 1.0, 2.0)]
    return SafetyTaxCalculator(ref, n_boot=300).analyze(settings)


def test_numbers_carry_their_ci_and_n() -> None:
    rate = rate_metric(481, 520)
    low, high = rate["ci"]
    assert fmt_metric(rate["value"], rate["ci"], rate["n"]) == f"0.925 [{low:.3f}, {high:.3f}] (n=520)"
    assert fmt_metric(0.57, None, 100) == "0.570 (n=100)"
    assert fmt_metric(None, None, None) == "–"
    assert markdown_table(["a", "b"], [["x|y", "1"]]) == "| a | b |\n|---|---|\n| x\\|y | 1 |"


def test_tax_section_shows_each_setting_and_the_front_areas() -> None:
    tax = _tax()
    md = tax_markdown(tax)
    # The tax of beta=1: (0.57 - 0.55) / 0.2 = 0.100.
    beta1 = next(r for r in tax["settings"] if r["label"] == "beta=1.0")
    assert abs(beta1["tax"]["value"] - 0.1) < 1e-9 and "| sst | beta=1.0 | 0.550 | 0.700 |" in md
    assert "0.100" in md and "Pareto front areas" in md and "reference: ta ta, U=0.570, S=0.500" in md


def test_plots_render(tmp_path: Path) -> None:
    series = {"refusal_rate": {"ta": [{"experts": k, **rate_metric(520 - 40 * k, 520)} for k in (2, 4, 8)],
                               "sst": [{"experts": k, **rate_metric(500 - 5 * k, 520)} for k in (2, 4, 8)]},
              "accuracy": {"ta": [{"experts": k, "value": 0.6 - 0.01 * k, "n": 100, "ci": None} for k in (2, 4, 8)]}}
    plot_pareto(_tax(), tmp_path / "pareto.png")
    plot_vs_experts(series, tmp_path / "experts.png")
    for name in ("pareto.png", "experts.png"):
        data = (tmp_path / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["experts.png", "pareto.png"]  # no temporaries left

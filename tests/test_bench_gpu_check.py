"""benchmarks/gpu_check.sh, the script a lent GPU machine runs, works end to end (here on the CPU, small layers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_script_merges_ties_and_sst_and_writes_one_row_each(tmp_path: Path):
    env = {**os.environ, "PY": sys.executable, "LAYERS": "2", "DEVICE": "cpu", "TINY": "1", "WORK": str(tmp_path),
           "FISHER_EXAMPLES": "8"}
    done = subprocess.run(["bash", str(ROOT / "benchmarks/gpu_check.sh")], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:] + (tmp_path / "gpu_check_sst.log").read_text()[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "gpu_check.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == ["ties", "sst"]
    ties, sst = rows
    assert ties["modules"] == sst["modules"] == 14 and ties["device"] == "cpu" and ties["layers"] == 2
    assert ties["wall_s"] > 0 and ties["peak_rss_bytes"] > 0 and ties["output_bytes"] > 0
    assert (tmp_path / "out_ties" / "model.safetensors").is_file()
    assert (tmp_path / "out_sst" / "adapter_model.safetensors").is_file()
    assert "prepare" in sst["seconds"] and sst["resolved"]

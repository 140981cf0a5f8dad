"""The benchmark runner's bookkeeping: which of our rows run how often, and which earlier rows are kept."""

from __future__ import annotations

import argparse

from benchmarks.run import kept_rows, run_plan

ARGS = argparse.Namespace(runs=5, warmup=1, dense_runs=5, dense_warmup=1)


def test_run_plan_measures_a_whole_model_fewer_times_and_skips_what_would_take_hours():
    assert run_plan("ta", "full", 1, ARGS) == (5, 1)
    assert run_plan("ties", "full", 2, ARGS) == (5, 1)
    assert run_plan("ties", "peft", 1, ARGS) == (1, 0)  # a dense SVD per module
    assert run_plan("ties", "peft", 32, ARGS) is None
    assert run_plan("ta", "peft", 32, ARGS) == (3, 0)
    assert run_plan("dare_ties", "full", 32, ARGS) == (1, 0)
    assert run_plan("magnitude_prune", "full", 32, ARGS) is None


def test_kept_rows_keep_what_was_not_measured_again_and_label_our_old_rows():
    ours_old = {"bench": "merge", "method": "ties", "tool": "sst-merge", "format": "full", "layers": 1,
                "wall_s_median": 34}
    floor_old = {**ours_old, "tool": "floor", "wall_s_median": 0.6}
    peer = {**ours_old, "tool": "mergekit", "merge_dtype": "bfloat16", "wall_s_median": None}
    history = {**ours_old, "variant": "before (older)", "wall_s_median": 170}
    new = [{**ours_old, "wall_s_median": 14}, {**floor_old, "wall_s_median": 0.5}]
    kept = kept_rows([ours_old, floor_old, peer, history], new, before=None)
    assert kept == [peer, history]
    labelled = kept_rows([ours_old, floor_old, peer, history], new, before="before (fourth session)")
    assert labelled == [peer, history, {**ours_old, "variant": "before (fourth session)"}]

"""Plain progress lines for long work whose stderr is a log file."""

from __future__ import annotations

from sst_merge.progress import plain_progress


def test_a_log_gets_a_line_at_most_every_interval_and_one_at_the_end_of_long_work():
    ticks = iter(range(0, 1000, 25))  # the clock advances 25 s per call
    lines: list[str] = []
    items = list(plain_progress(range(6), "training", 6, lines.append, every_s=60.0, clock=lambda: next(ticks)))
    assert items == list(range(6))
    assert lines == ["training: 3/6, 75 s", "training: 6/6, 150 s", "training: 6/6 done, 175 s"]


def test_short_work_writes_nothing_and_an_unknown_total_reads_as_a_question_mark():
    lines: list[str] = []
    assert list(plain_progress(iter("abc"), "quick", None, lines.append, clock=lambda: 0.0)) == ["a", "b", "c"]
    assert lines == []
    ticks = iter(range(0, 1000, 70))
    list(plain_progress(iter("ab"), "slow", None, lines.append, every_s=60.0, clock=lambda: next(ticks)))
    assert lines[0] == "slow: 1/?, 70 s" and lines[-1] == "slow: 2/? done, 210 s"

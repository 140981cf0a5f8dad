"""Outputs that cannot be written and runs that are stopped: one line, exit 2 (or 143 for SIGTERM),
nothing half-written left behind, an old output intact.

A read-only file system and a full disk are the real thing: the commands run under bubblewrap with a
directory bound read-only and another a tiny tmpfs (as root, permissions alone would not stop a write).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sst_merge.cli import main


def _bwrap_works() -> bool:
    try:
        probe = subprocess.run(["bwrap", "--dev-bind", "/", "/", "true"], capture_output=True, timeout=30)
        return probe.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


needs_bwrap = pytest.mark.skipif(not _bwrap_works(), reason="bubblewrap cannot make mount namespaces here")

# Runs `sst-merge` argument lists in one process and prints [[exit code, stderr], ...] as the last line.
_CALLS = """
import contextlib, io, json, sys
from sst_merge.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(argv)
    results.append([code, err.getvalue()])
print(json.dumps(results))
"""


def run_confined(calls: list[list[str]], read_only: Path, full: Path) -> list[tuple[int, str]]:
    """Run the `calls` with `read_only` mounted read-only and `full` an 8 KiB tmpfs (both must exist)."""
    cmd = ["bwrap", "--dev-bind", "/", "/", "--ro-bind", str(read_only), str(read_only),
           "--size", str(8 << 10), "--tmpfs", str(full), sys.executable, "-c", _CALLS, json.dumps(calls)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    return [tuple(result) for result in json.loads(proc.stdout.splitlines()[-1])]


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def _merge_args(base: Path, adapter: Path, out: Path, *extra: str) -> list[str]:
    return ["merge", "--base", str(base), "--adapter", str(adapter), "--method", "ta", "--output", str(out), *extra]


@needs_bwrap
def test_read_only_directory_and_full_disk(tiny_base, tiny_adapters, tmp_path):
    read_only, full = tmp_path / "ro", tmp_path / "full"
    read_only.mkdir()
    full.mkdir()
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"prompt": "p" * 100, "response": "I'm sorry"}) + "\n" for _ in range(100)))
    calls = [
        _merge_args(tiny_base, tiny_adapters[0], read_only / "out"),
        ["judge", "--input", str(rows), "--output", str(read_only / "judged.jsonl")],
        _merge_args(tiny_base, tiny_adapters[0], full / "out"),
        _merge_args(tiny_base, tiny_adapters[0], full / "out", "--format", "full"),
        ["judge", "--input", str(rows), "--output", str(full / "judged.jsonl")],
    ]
    results = run_confined(calls, read_only, full)
    for (code, err), argv, needle in zip(results, calls, ["read-only"] * 2 + ["No space left on device"] * 3,
                                         strict=True):
        line = _one_line(err)
        output = argv[argv.index("--output") + 1]
        assert code == 2 and f"{output}: " in line and needle in line, line
    # nothing of the outputs is left (the tmpfs is gone with the sandbox; the read-only directory is empty)
    assert list(read_only.iterdir()) == [] and list(full.iterdir()) == []


def test_output_parent_is_a_file(tiny_base, tiny_adapters, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"prompt": "p", "response": "r"}) + "\n")
    for argv in (_merge_args(tiny_base, tiny_adapters[0], blocker / "out"),
                 ["judge", "--input", str(rows), "--output", str(blocker / "sub" / "j.jsonl")]):
        capsys.readouterr()
        assert main(argv) == 2
        line = _one_line(capsys.readouterr().err)
        assert f"{blocker} is not a directory" in line and argv[argv.index("--output") + 1] in line
    assert blocker.read_text() == "not a directory"


@pytest.mark.parametrize("output", ["", ".", "..", "CWD"])
def test_output_that_names_no_new_path(tiny_base, tiny_adapters, tmp_path, monkeypatch, capsys, output):
    """`--output ''` or `.` with --force used to leave `..x.partial` in the working directory."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    output = str(work) if output == "CWD" else output
    assert main(_merge_args(tiny_base, tiny_adapters[0], Path(output), "--force")) == 2
    line = _one_line(capsys.readouterr().err)
    assert "output must name a file or directory" in line or "would replace the working directory" in line
    assert list(work.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["work"]


@pytest.mark.parametrize(("argv", "needle"), [
    (["testbed", "build", "--threads", "0"], "--threads must be at least 1, got 0"),
    (["testbed", "build", "--workers", "-1"], "--workers must be at least 1, got -1"),
    (["judge", "--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    (["eval", "--base", "b", "--suite", "testbed", "--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
])
def test_flags_below_their_minimum(tmp_path, capsys, argv, needle):
    out = tmp_path / "out"
    if argv[0] == "testbed":
        argv = [*argv, "--out", str(out), "--preset", "micro"]
    elif argv[0] == "judge":
        (tmp_path / "in.jsonl").write_text(json.dumps({"prompt": "p", "response": "r"}) + "\n")
        argv = [*argv, "--input", str(tmp_path / "in.jsonl"), "--output", str(out)]
    else:
        argv = [*argv, "--output", str(out)]
    assert main(argv) == 2
    assert needle in _one_line(capsys.readouterr().err)
    assert not out.exists()


# A merge whose PEFT writer, once it has written into the temporary directory, says so and waits.
_SLOW_MERGE = """
import json, sys, time
import sst_merge.merge as merge
from sst_merge.cli import main
write = merge.write_peft_adapter
def slow(out_dir, *args, **kwargs):
    write(out_dir, *args, **kwargs)
    open(sys.argv[2], "w").close()
    time.sleep(120)
merge.write_peft_adapter = slow
sys.exit(main(json.loads(sys.argv[1])))
"""


def _start_slow_merge(argv: list[str], ready: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_MERGE, json.dumps(argv), str(ready)], text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while not ready.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.05)
    return proc


def test_sigterm_cleans_up_and_keeps_the_old_output(tiny_base, tiny_adapters, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    proc = _start_slow_merge(_merge_args(tiny_base, tiny_adapters[0], out, "--force"), tmp_path / "ready")
    assert len(list(tmp_path.glob(".out.*.partial"))) == 1  # the merge is under way
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143
    assert "terminated" in _one_line(err) and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "ready"]
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "precious"


def test_leftovers_of_a_killed_run_are_removed_by_the_next(tiny_base, tiny_adapters, tmp_path, capsys):
    out = tmp_path / "out"
    proc = _start_slow_merge(_merge_args(tiny_base, tiny_adapters[0], out), tmp_path / "ready")
    proc.kill()  # SIGKILL: no chance to clean up
    proc.wait(timeout=60)
    (stale,) = tmp_path.glob(".out.*.partial")
    assert (stale / "adapter_model.safetensors").is_file()
    # A temporary of a run still going (this process) and one of another target stay.
    running = tmp_path / f".out.{os.getpid()}.abcd1234.partial"
    other = tmp_path / f".out2.{proc.pid}.abcd1234.partial"
    running.mkdir()
    other.mkdir()
    assert main(_merge_args(tiny_base, tiny_adapters[0], out)) == 0
    assert not stale.exists() and running.is_dir() and other.is_dir()
    assert (out / "adapter_model.safetensors").is_file()

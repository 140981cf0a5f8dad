"""Run one command as its own process and measure it: wall time, peak RSS (GNU time -v), the load average.

A watchdog polls the RSS of the process tree and kills it past a limit, so that a peer tool cannot
take the shared machine's memory.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

GNU_TIME = "/usr/bin/time"


@dataclass
class Measured:
    """One run: wall seconds, peak RSS in bytes (largest process), exit code, output, load averages."""

    wall_s: float
    peak_rss_bytes: int
    returncode: int
    stdout: str
    stderr: str
    load_before: tuple[float, float, float]
    killed_for_memory: bool = False


@dataclass
class Series:
    """Repeated runs of one command (the warm-up excluded)."""

    runs: list[Measured] = field(default_factory=list)

    @property
    def wall_s_median(self) -> float:
        return statistics.median(r.wall_s for r in self.runs)

    @property
    def peak_rss_bytes(self) -> int:
        return max(r.peak_rss_bytes for r in self.runs)


def _tree_rss(proc: psutil.Process) -> int:
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def run_measured(cmd: list[str], rss_limit_bytes: int, env: dict[str, str] | None = None) -> Measured:
    """Run `cmd` under GNU time; kill its process group if the tree's RSS passes `rss_limit_bytes`."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as report:
        load = os.getloadavg()
        started = time.perf_counter()
        proc = subprocess.Popen(
            [GNU_TIME, "-v", "-o", report.name, *cmd],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        killed = threading.Event()

        def watch() -> None:
            handle = psutil.Process(proc.pid)
            while proc.poll() is None:
                if _tree_rss(handle) > rss_limit_bytes:
                    killed.set()
                    os.killpg(proc.pid, signal.SIGKILL)
                    return
                time.sleep(0.2)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        stdout, stderr = proc.communicate()
        wall = time.perf_counter() - started
        watcher.join()
        text = Path(report.name).read_text()
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    peak = int(match.group(1)) * 1024 if match else 0
    return Measured(wall, peak, proc.returncode, stdout, stderr, load, killed.is_set())


class RunFailed(RuntimeError):
    """A measured run exited non-zero or was killed; `measured` says how far it got."""

    def __init__(self, message: str, measured: Measured) -> None:
        super().__init__(message)
        self.measured = measured


def repeat(cmd: list[str], runs: int, warmup: int, rss_limit_bytes: int) -> Series:
    """`warmup` unrecorded runs, then `runs` recorded ones; raises RunFailed at the first failure."""
    series = Series()
    for i in range(warmup + runs):
        measured = run_measured(cmd, rss_limit_bytes)
        if measured.returncode != 0:
            why = "killed: RSS over the limit" if measured.killed_for_memory else measured.stderr[-2000:]
            raise RunFailed(f"{' '.join(cmd[:4])} … failed ({measured.returncode}): {why}", measured)
        if i >= warmup:
            series.runs.append(measured)
    return series

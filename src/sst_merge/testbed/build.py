"""Build the testbed: data → tokenizer → base → (experts, safety adapter; in parallel) → organism.json.

Every stage is seeded; the output directory is named by the settings' content hash and written
atomically, so a finished build is reused instantly and an interrupted one leaves nothing behind.
Worker processes only change the wall time: each adapter's job is seeded by its own name. A build
whose base settings match a finished build's (in the cache root or beside the output) copies that
base instead of training it again, so changing only expert settings costs only the adapters.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import peft
import torch
import transformers

from sst_merge.atomic import atomic_output_dir, write_json_atomic
from sst_merge.errors import InputError
from sst_merge.progress import console
from sst_merge.testbed.config import RECIPE_VERSION, TestbedConfig, base_hash, make_config
from sst_merge.testbed.data import make_data, write_data
from sst_merge.testbed.layout import MANIFEST, Testbed, load_testbed
from sst_merge.testbed.safety_data import CATEGORIES, REFUSAL
from sst_merge.testbed.stages import BASE_DATA, SAFETY, adapter_job, base_safety_job, loss_summary, train_base
from sst_merge.testbed.tasks import TASK_NAMES
from sst_merge.testbed.tokenizer import train_tokenizer


def default_cache_root() -> Path:
    """Where builds go without `out`: ``$SST_MERGE_CACHE/testbed``, else ``<repo>/.cache/testbed`` in a
    source checkout, else ``~/.cache/sst_merge/testbed``."""
    if os.environ.get("SST_MERGE_CACHE"):
        return Path(os.environ["SST_MERGE_CACHE"]) / "testbed"
    repo = Path(__file__).resolve().parents[3]
    if (repo / "pyproject.toml").is_file() and (repo / ".git").exists():
        return repo / ".cache" / "testbed"
    return Path.home() / ".cache" / "sst_merge" / "testbed"


def is_built(out: Path, cfg: TestbedConfig) -> bool:
    """Whether `out` holds a finished build of exactly these settings."""
    try:
        return load_testbed(out).manifest.get("hash") == cfg.content_hash()
    except InputError:
        return False


def finished_builds(roots: list[Path]) -> Iterator[Testbed]:
    """Every finished build directly under one of `roots` (unreadable manifests are skipped)."""
    for root in roots:
        for manifest in sorted(root.glob(f"*/{MANIFEST}")) if root.is_dir() else []:
            try:
                yield load_testbed(manifest.parent)
            except InputError:
                continue


def find_shared_base(cfg: TestbedConfig, roots: list[Path]) -> Testbed | None:
    """A finished build under one of `roots` whose base was built from the same settings as `cfg`'s."""
    wanted = base_hash(cfg.to_dict())
    for build in finished_builds(roots):
        # The hash the build recorded, not one recomputed from its settings: a base from an older
        # recipe has the same settings but not the same hash.
        if build.manifest.get("base_hash") == wanted and build.base_dir.is_dir():
            return build
    return None


def find_sibling_build(cfg: TestbedConfig, roots: list[Path]) -> Testbed | None:
    """A finished build under one of `roots` whose settings equal `cfg`'s except for the number of experts.

    Every adapter depends on the settings and its own name only, so such a build's adapters (and the
    base's safety metrics) are exactly the ones this build would train; the one with most experts wins.
    """
    wanted = {**cfg.to_dict(), "experts": None}
    best: Testbed | None = None
    for build in finished_builds(roots):
        settings = build.manifest.get("settings")
        if (
            build.manifest.get("recipe_version") == RECIPE_VERSION
            and isinstance(settings, dict)
            and {**settings, "experts": None} == wanted
            and (best is None or settings["experts"] > best.manifest["settings"]["experts"])
        ):
            best = build
    return best


def reused_results(sibling: Testbed, names: list[str], root: Path) -> dict[str, dict[str, Any]]:
    """Copy the adapters among `names` that the finished build `sibling` has into `root`; return their
    results (metrics, loss, times) as `adapter_job` gives them."""
    manifest = sibling.manifest
    metrics = {**manifest["metrics"]["experts"], SAFETY: manifest["metrics"]["safety"]}
    results = {}
    for name in names:
        sub = Path(SAFETY) if name == SAFETY else Path("experts") / name
        if name in metrics and (sibling.root / sub).is_dir():
            shutil.copytree(sibling.root / sub, root / sub)
            results[name] = {"metrics": metrics[name], "loss": manifest["train_loss"][name],
                             "times_s": manifest["times_s"]["adapters"][name]}
    return results


def build_testbed(
    experts: int | None = None,
    seed: int | None = None,
    out: str | Path | None = None,
    force: bool = False,
    preset: str = "default",
    workers: int | None = None,
    threads: int = 1,
    **overrides: Any,
) -> Path:
    """Build the testbed (or find it built) and return its directory.

    `experts` and `seed` override the preset's; keyword `overrides` set any other `TestbedConfig`
    field. Without `out` the directory is ``<cache root>/<content hash>``. A finished build of the same
    settings is returned at once unless `force`; something else at `out` is replaced only with `force`.
    Adapters train in `workers` processes (default: 1 for the micro preset, else the CPU count, at
    most 4) with `threads` torch threads each; neither changes what is built.
    """
    cfg = make_config(preset, experts=experts, seed=seed, **overrides)
    out = Path(out) if out is not None else default_cache_root() / cfg.content_hash()
    if is_built(out, cfg) and not force:
        return out
    if out.exists() and not force:
        raise InputError("holds something other than this testbed build (pass --force to replace it)", out)
    if workers is None:
        workers = 1 if preset == "micro" else min(4, os.cpu_count() or 1)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with atomic_output_dir(out, force=True) as tmp:
            manifest = build_into(tmp, cfg, workers, threads)
            write_json_atomic(tmp / MANIFEST, manifest)
    finally:
        torch.set_num_threads(previous_threads)
    return out


class _InlineExecutor(Executor):
    """Runs each job at submission, in this process (one worker: no start-up cost)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        future.set_result(fn(*args, **kwargs))
        return future


def _executor(workers: int) -> Executor:
    if workers <= 1:
        return _InlineExecutor()
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))


def _timed(times: dict[str, Any], key: str, start: float) -> float:
    now = time.perf_counter()
    times[key] = round(now - start, 2)
    console.log(f"testbed: {key} took {times[key]:.1f} s")
    return now


def build_into(root: Path, cfg: TestbedConfig, workers: int, threads: int) -> dict[str, Any]:
    """Run every stage into the empty directory `root`; return the manifest (settings, times, metrics)."""
    times: dict[str, Any] = {}
    start = t = time.perf_counter()
    data = make_data(cfg)
    write_data(root / "data", data)
    t = _timed(times, "data", t)

    roots = [default_cache_root(), root.parent]
    shared = find_shared_base(cfg, roots)
    if shared is not None:
        # Another finished build has the same base settings: its base is this build's base.
        shutil.copytree(shared.base_dir, root / "base")
        base_loss_summary = shared.manifest["train_loss"]["base"]
        times["base_reused_from"] = str(shared.root)
        t = _timed(times, "base_copy", t)
    else:
        # Trained on the base's own data only: the base, tokenizer included, does not depend on the tasks.
        texts = [row[key] for name in BASE_DATA for row in data[name]["train"] for key in ("prompt", "response")]
        tokenizer = train_tokenizer(texts + [REFUSAL], cfg.vocab_size)
        t = _timed(times, "tokenizer", t)
        # The base trains alone: all cores (adapter workers use `threads` each).
        torch.set_num_threads(max(threads, os.cpu_count() or 1))
        base, base_loss = train_base(cfg, tokenizer, data)
        torch.set_num_threads(threads)
        base.save_pretrained(root / "base")
        tokenizer.save_pretrained(root / "base")
        base_loss_summary = loss_summary(base_loss)
        del base
        t = _timed(times, "base_train", t)

    names = [*cfg.tasks, SAFETY]
    results: dict[str, dict[str, Any]] = {}
    base_safety: dict[str, float] | None = None
    sibling = find_sibling_build(cfg, roots)
    if sibling is not None:
        # A build of the same settings with other experts: its adapters are this build's, byte for byte.
        results = reused_results(sibling, names, root)
        base_metrics = sibling.manifest["metrics"]["base"]
        base_safety = {key: base_metrics[key] for key in ("refusal", "over_refusal")}
        times["adapters_reused_from"] = str(sibling.root)
        console.log(f"testbed: reused {len(results)} adapters from {sibling.root}")
    with _executor(workers) as pool:
        base_future = pool.submit(base_safety_job, cfg, root, threads) if base_safety is None else None
        futures = {pool.submit(adapter_job, cfg, root, name, threads): name for name in names if name not in results}
        for future in as_completed(futures):
            name = futures[future]
            results[name] = future.result()
            console.log(f"testbed: {name}: {results[name]['metrics']} {results[name]['times_s']}")
        if base_future is not None:
            base_safety = base_future.result()
    assert base_safety is not None
    t = _timed(times, "adapters_and_eval", t)
    times["total"] = round(t - start, 2)
    times["adapters"] = {name: results[name]["times_s"] for name in names}

    experts = {task: results[task]["metrics"] for task in cfg.tasks}
    mean_expert_refusal = sum(m["refusal"] for m in experts.values()) / len(experts)
    return {
        "format": "sst-merge-organism",
        "preset": "synthetic",
        "recipe_version": RECIPE_VERSION,
        "hash": cfg.content_hash(),
        "settings": cfg.to_dict(),
        "base_hash": base_hash(cfg.to_dict()),
        "refusal": REFUSAL,
        "tasks": cfg.tasks,
        "all_tasks": TASK_NAMES,
        "harm_categories": list(CATEGORIES),
        "metrics": {
            "base": {**base_safety, "accuracy": {task: m["base_accuracy"] for task, m in experts.items()}},
            "experts": experts,
            "erosion": {
                "base_refusal": base_safety["refusal"],
                "mean_expert_refusal": round(mean_expert_refusal, 4),
                "drop": round(base_safety["refusal"] - mean_expert_refusal, 4),
            },
            "safety": results[SAFETY]["metrics"],
        },
        "train_loss": {"base": base_loss_summary, **{name: results[name]["loss"] for name in names}},
        "times_s": times,
        "workers": workers,
        "threads": threads,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
    }

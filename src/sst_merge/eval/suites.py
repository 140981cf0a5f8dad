"""The registry of evaluation suites: a suite name maps to a runner with one common signature.

A runner is `run(model, tokenizer, options: SuiteOptions) -> dict`. The dict it returns is JSON-able
and has at least:

* `"suite"`: the suite name, `"kind"`: `"safety"` or `"utility"`;
* `"metrics"`: `{metric_name: {"value": float, "n": int, "ci": [low, high], ...}}`;
* `"items"`: the per-item rows (prompt, response, score/refusal, ...). The `eval` command moves them
  out of the results JSON into the generations file beside it, so a judge can be re-run later.

Modules that define suites register them with `@register_suite(...)` and are listed in
`SUITE_MODULES`; they are imported only when the registry is first consulted, so a module that is
missing or broken is reported by name instead of breaking the import of this one.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sst_merge.errors import InputError

# Modules whose import registers suites. Add a line here to plug in a new family of suites.
SUITE_MODULES = [
    "sst_merge.eval.safety",
    "sst_merge.eval.humaneval",
    "sst_merge.eval.mmlu",
    "sst_merge.eval.gsm8k",
    "sst_merge.eval.testbed_tasks",
]


@dataclass(frozen=True)
class SuiteOptions:
    """Settings shared by every suite; `extra` carries suite-specific ones (e.g. MMLU subjects).

    `judge` is a judge object from `sst_merge.eval.judges` (None: the suite's default judge);
    `generate`, when set, replaces the transformers model for generation-only suites (the vLLM
    backend): `generate(prompts, max_new_tokens, system, stop_strings) -> replies`;
    `data_dir` is the `--data-dir` given (None: resolve with `sst_merge.data.paths.resolve_data_dir`,
    i.e. `$SST_MERGE_DATA` or the repository's `data/`, when a suite needs it);
    `testbed_dir` is a testbed directory (for the `testbed` suites); `limit` keeps the first N items
    of each split; `max_new_tokens` bounds generation; `system` is an optional system message.
    """

    limit: int | None = None
    batch_size: int = 16
    data_dir: Path | None = None
    max_new_tokens: int = 256
    judge: Any = None
    testbed_dir: Path | None = None
    system: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    generate: Callable[..., list[str]] | None = None


SuiteRunner = Callable[[Any, Any, SuiteOptions], dict[str, Any]]


@dataclass(frozen=True)
class Suite:
    """A registered suite: its name, kind (`safety` or `utility`), runner and a one-line description.

    `check(options)`, when given, validates the suite's inputs (data files present and readable)
    cheaply, so the `eval` command can refuse bad input before it loads any model.
    """

    name: str
    kind: str
    run: SuiteRunner
    description: str
    check: Callable[[SuiteOptions], None] | None = None


_REGISTRY: dict[str, Suite] = {}
_loaded = False


def register_suite(
    name: str, kind: str, description: str, check: Callable[[SuiteOptions], None] | None = None
) -> Callable[[SuiteRunner], SuiteRunner]:
    """Decorator: register `run` under `name` (with an optional input `check`); a name registered twice
    is a programming error."""
    if kind not in ("safety", "utility"):
        raise ValueError(f"suite kind must be 'safety' or 'utility', not {kind!r}")

    def decorate(run: SuiteRunner) -> SuiteRunner:
        if name in _REGISTRY:
            raise ValueError(f"suite {name!r} is registered twice")
        _REGISTRY[name] = Suite(name=name, kind=kind, run=run, description=description, check=check)
        return run

    return decorate


def load_suites() -> dict[str, Suite]:
    """Import every module in `SUITE_MODULES` (once) and return the registry, name -> Suite."""
    global _loaded
    if not _loaded:
        for module in SUITE_MODULES:
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as exc:
                raise RuntimeError(f"suite module {module} could not be imported: {exc}") from exc
        _loaded = True
    return dict(_REGISTRY)


def get_suite(name: str) -> Suite:
    """The suite called `name`; an unknown name is an InputError that lists the known ones."""
    suites = load_suites()
    if name not in suites:
        raise InputError(f"unknown suite {name!r}; known suites: {', '.join(sorted(suites))}")
    return suites[name]


def parse_suites(spec: str) -> list[Suite]:
    """Resolve a comma-separated list of suite names (`"advbench,xstest"`), in order, without repeats."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise InputError("no suite given (--suite a,b,...)")
    return [get_suite(name) for name in dict.fromkeys(names)]

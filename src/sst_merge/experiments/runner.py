"""Run the three experiments on one model: reference cells, exp1's sweeps, selection on validation
data, exp2 (number of experts) and exp3 (baseline comparison); every cell saved as soon as it is done."""

from __future__ import annotations

import json
import logging
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sst_merge.atomic import write_json_atomic, write_text_atomic
from sst_merge.errors import InputError
from sst_merge.eval.safety_tax import SafetyTaxCalculator, Setting
from sst_merge.experiments.cells import Cell, CellStore, merge_summary, resolved_of
from sst_merge.experiments.config import ExperimentConfig, MethodSpec, Mode
from sst_merge.experiments.evaluation import general_headlines
from sst_merge.experiments.paired import matched_utility_row, paired_difference
from sst_merge.experiments.report import resolved_text
from sst_merge.experiments.subject import Subject, resolve_subject
from sst_merge.merge import MergeConfig, merge_adapters
from sst_merge.methods import get_method
from sst_merge.models import load_model
from sst_merge.progress import console

log = logging.getLogger("sst_merge.experiments")


MERGE_TMP_PREFIX = "merge-tmp-"


class Runner:
    """Evaluates cells for one subject, reusing every cell already saved in the run directory."""

    def __init__(self, config: ExperimentConfig, subject: Subject, run_dir: Path) -> None:
        self.config = config
        self.subject = subject
        self.run_dir = run_dir
        self.store = CellStore(run_dir / "cells")
        self.computed = 0
        self.reused = 0
        # A run killed inside a merge cell leaves its temporary merged model behind.
        for stale in run_dir.glob(f"{MERGE_TMP_PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)

    def record(self, cell: Cell) -> dict[str, Any]:
        """The cell's saved record, computing and saving it first if needed."""
        saved = self.store.get(cell)
        if saved is not None:
            self.reused += 1
            return saved
        started = time.perf_counter()
        log.info("cell %s: computing", cell.key())
        record = self._compute(cell)
        record["seconds"] = round(time.perf_counter() - started, 2)
        self.store.put(cell, record)
        self.computed += 1
        log.info("cell %s: done in %.1f s", cell.key(), record["seconds"])
        return self.store.get(cell) or record

    def _compute(self, cell: Cell) -> dict[str, Any]:
        subject, spec = self.subject, self.subject.spec
        load = {"dtype": spec.dtype, "device_map": spec.device_map, "attn_implementation": spec.attn_implementation}
        if cell.kind == "base":
            model, tok = load_model(subject.base, **load)
            return {"metrics": subject.evaluator.evaluate(model, tok, subject.tasks)}
        if cell.kind == "expert":
            model, tok = load_model(subject.base, subject.experts[subject.tasks.index(cell.task)], **load)
            # An expert is a reference for its own task: the general check is for the models compared.
            return {"metrics": subject.evaluator.evaluate(model, tok, [cell.task], safety=spec.expert_safety,
                                                          general=False)}
        if cell.kind == "safety":
            model, tok = load_model(subject.base, subject.safety_adapter, **load)
            return {"metrics": subject.evaluator.evaluate(model, tok, [])}
        tmp = Path(tempfile.mkdtemp(prefix=MERGE_TMP_PREFIX, dir=self.run_dir))
        try:
            params = {**cell.params, **subject.method_data(cell.method, cell.k)}
            if "cache_dir" in get_method(cell.method).params.model_fields:
                # Fisher factors depend on the experts merged, not on the swept setting: compute once per K.
                params.setdefault("cache_dir", str(self.run_dir / "fisher-cache"))
            if "seed" in params or cell.method.startswith("dare"):
                params["seed"] = cell.seed
            merge = merge_adapters(
                MergeConfig(
                    base=Path(subject.base),
                    adapters=subject.experts[: cell.k],
                    method=cell.method,
                    weights=[cell.scale] * cell.k,
                    format="full",
                    output=tmp / "merged",
                    **params,
                )
            )
            model, tok = load_model(tmp / "merged", **load)
            metrics = subject.evaluator.evaluate(model, tok, subject.tasks[: cell.k])
            return {"metrics": metrics, "merge": merge_summary(merge)}
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def merge_cell(label: str, spec: MethodSpec, k: int, override: dict[str, Any] | None = None, seed: int = 0) -> Cell:
    """The merge cell of method `label` with `k` experts; `override` sets the swept parameter."""
    params = dict(spec.params)
    scale = spec.scale
    for key, value in (override or {}).items():
        if key == "scale":
            scale = float(value)
        else:
            params[key] = value
    return Cell(kind="merge", k=k, label=label, method=spec.method, scale=scale, params=params, seed=seed)


def with_source_scale(spec: MethodSpec, sweeps: dict[str, list[dict[str, Any]]]) -> MethodSpec:
    """`spec` at the scale of the method it names in `scale_from`: the one with that method's best
    validation utility. A filter starts from the merge a user would make without it (the selection rule's
    safest fallback would hand it a broken merge when no unfiltered scale keeps refusal)."""
    if spec.scale_from is None:
        return spec
    best = select(sweeps[spec.scale_from], base_refusal=0.0, floor=0.0)  # no refusal floor: best utility
    return spec.model_copy(update={"scale": best["scale"]})


def summarize(record: dict[str, Any], split: str, experts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One row: refusal, over-refusal, mean task accuracy and mean accuracy normalised by each expert's."""
    metrics = record["metrics"][split]
    tasks = metrics["tasks"]
    accuracy = [m["value"] for m in tasks.values()]
    normalized = [
        tasks[t]["value"] / experts[t]["metrics"][split]["tasks"][t]["value"]
        for t in tasks
        if t in experts and experts[t]["metrics"][split]["tasks"][t]["value"] > 0
    ]
    row = {
        "refusal": metrics["refusal"],
        "over_refusal": metrics["over_refusal"],
        "accuracy": statistics.fmean(accuracy) if accuracy else None,
        "normalized_accuracy": statistics.fmean(normalized) if normalized else None,
        "tasks": len(tasks),
    }
    if metrics.get("general"):
        row["general"] = general_headlines(metrics["general"])
    return row


def select(rows: list[dict[str, Any]], base_refusal: float, floor: float) -> dict[str, Any]:
    """The validation-chosen row: best utility among rows with refusal ≥ floor·base, else the safest."""
    eligible = [r for r in rows if r["val"]["refusal"]["value"] >= floor * base_refusal]
    if eligible:
        return max(eligible, key=lambda r: (r["val"]["normalized_accuracy"] or 0.0, r["val"]["refusal"]["value"]))
    return max(rows, key=lambda r: (r["val"]["refusal"]["value"], r["val"]["normalized_accuracy"] or 0.0))


def run_experiments(
    config: ExperimentConfig,
    mode: Mode,
    model: str,
    experiments: list[str],
    run_dir: Path,
    set_aside_stale: bool = False,
) -> dict[str, Any]:
    """Run `experiments` (subset of exp1..exp3) for `model` in `mode`; write results.json and return it.

    A `run_dir` holding a run made for another model build or other data is refused, or with
    `set_aside_stale` moved aside (see `check_run_identity`)."""
    if model not in config.models:
        raise InputError(f"unknown model {model!r}; configured: {', '.join(config.models)}")
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run_dir / LOG_NAME)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        return _run(config, mode, model, experiments, run_dir, set_aside_stale)
    finally:
        log.removeHandler(handler)
        handler.close()


IDENTITY = "run_identity.json"
LOG_NAME = "run.log"


def run_identity(config: ExperimentConfig, mode: Mode, model: str, subject: Subject) -> dict[str, Any]:
    """What a finished cell's numbers depend on beyond the cell itself: the models evaluated (a testbed
    build's hash) and the evaluation data settings. Methods and K are in each cell's own key."""
    return {
        "model": model,
        "subject": subject.fingerprint,
        "model_spec": config.models[model].model_dump(mode="json"),
        "datasets": config.datasets[mode].model_dump(mode="json"),
    }


def check_run_identity(run_dir: Path, identity: dict[str, Any], set_aside: bool = False) -> None:
    """Record `identity` in a new run directory; a directory whose cells were computed for another run
    is refused, or with `set_aside` moved to ``<run_dir>.stale-<time>`` so that this run starts afresh."""
    path = run_dir / IDENTITY
    found: dict[str, Any] | None = None
    if path.is_file():
        try:
            found = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise InputError(f"corrupt run identity ({exc})", path) from exc
        if found == identity:
            return
    elif (run_dir / "cells").is_dir():
        found = {}  # cells from before run directories recorded what they were computed for
    if found is not None:
        changed = sorted(key for key in {**found, **identity} if found.get(key) != identity.get(key))
        if not set_aside:
            raise InputError(
                f"holds a run whose {', '.join(changed)} differ from this one's, so its finished cells do not "
                "apply; pass --output to start a new run, or delete the directory", run_dir)
        stale = set_aside_run(run_dir)
        log.warning("%s held a run for other %s: moved it to %s", run_dir, ", ".join(changed), stale)
    write_json_atomic(path, identity)


def set_aside_run(run_dir: Path) -> Path:
    """Move the contents of `run_dir` to a new sibling ``<name>.stale-<UTC time>``; the open run.log is
    copied, not moved, and starts over."""
    stale = run_dir.with_name(f"{run_dir.name}.stale-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}")
    stale.mkdir()
    for entry in run_dir.iterdir():
        if entry.name == LOG_NAME:
            shutil.copy2(entry, stale / entry.name)
            entry.write_text("")
        else:
            entry.rename(stale / entry.name)
    return stale


def _run(config: ExperimentConfig, mode: Mode, model: str, experiments: list[str], run_dir: Path,
         set_aside_stale: bool) -> dict[str, Any]:
    started = time.perf_counter()
    write_text_atomic(
        run_dir / "config.yaml",
        yaml.safe_dump(
            {"mode": mode, "model": model, "experiments": experiments, "config": config.model_dump(mode="json")},
            sort_keys=False,
        ),
    )
    k_sweep = config.num_experts("exp1", mode)[0]
    k_exp2 = config.num_experts("exp2", mode) if "exp2" in experiments else []
    k_exp3 = config.num_experts("exp3", mode)[0]
    max_k = max([k_sweep, k_exp3, *k_exp2])
    log.info("run %s: mode %s, model %s, experiments %s", run_dir.name, mode, model, experiments)
    subject = resolve_subject(model, config.models[model], config.datasets[mode], max_k)
    check_run_identity(run_dir, run_identity(config, mode, model, subject), set_aside_stale)
    runner = Runner(config, subject, run_dir)

    base, experts, references = reference_records(runner)
    base_val_refusal = base["metrics"]["val"]["refusal"]["value"]
    methods = {label: spec for label, spec in config.methods.items() if subject.can_run(spec.method)}
    for label in config.methods.keys() - methods.keys():
        log.info("method %s skipped: %s does not offer what it needs", label, model)
    selection = select_settings(runner, mode, methods, k_sweep, experts, base_val_refusal)
    results: dict[str, Any] = {
        "run": {"id": run_dir.name, "mode": mode, "model": model, "experiments": experiments},
        "references": references,
        "selection": {
            "rule": f"best validation normalised accuracy with validation refusal >= "
            f"{config.selection.safety_floor} x base ({base_val_refusal:.3f}); else the safest",
            "chosen": {label: {"param": row["param"], "value": row["value"], "scale": row["scale"],
                               "resolved": row.get("resolved")}
                       for label, row in selection.chosen.items()},
        },
    }
    if "exp1" in experiments:
        results["exp1"] = exp1(k_sweep, selection)
    if "exp2" in experiments:
        results["exp2"] = exp2(runner, k_exp2, methods, selection, experts)
    if "exp3" in experiments:
        results["exp3"] = exp3(runner, mode, k_exp3, methods, selection, experts)
    results["run"]["cells_computed"] = runner.computed
    results["run"]["cells_reused"] = runner.reused
    results["run"]["seconds"] = round(time.perf_counter() - started, 1)
    write_json_atomic(run_dir / "results.json", results)
    console.log(f"experiments: {runner.computed} cells computed, {runner.reused} reused")
    return results


def summary_rows(record: dict[str, Any], experts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A merge cell's rows: `summarize` of each split, and the settings its method resolved."""
    return {**{split: summarize(record, split, experts) for split in ("val", "test")},
            "resolved": resolved_of(record)}


def reference_records(runner: Runner) -> tuple[dict[str, Any], dict[str, dict[str, Any]], dict[str, Any]]:
    """The base's record, each expert's record by task, and the references section of the results
    (base, experts' own-task accuracy and refusal, the safety adapter if the subject has one)."""
    subject = runner.subject
    base = runner.record(Cell(kind="base"))
    experts = {task: runner.record(Cell(kind="expert", task=task)) for task in subject.tasks}
    references: dict[str, Any] = {"base": rows_of_reference(base), "experts": {}}
    for task, record in experts.items():
        references["experts"][task] = {
            split: {"accuracy": record["metrics"][split]["tasks"][task],
                    "refusal": record["metrics"][split].get("refusal")}
            for split in ("val", "test")
        }
    if subject.safety_adapter is not None:
        references["safety_adapter"] = rows_of_reference(runner.record(Cell(kind="safety")))
    return base, experts, references


@dataclass(frozen=True)
class Selection:
    """exp1's sweep of every method and the row chosen from each on validation data; exp2 and exp3
    run the chosen settings."""

    config: ExperimentConfig
    k: int
    sweeps: dict[str, list[dict[str, Any]]]
    chosen: dict[str, dict[str, Any]]

    def cell(self, label: str, k: int, seed: int = 0) -> Cell:
        """The merge cell of method `label` at its chosen setting (and the scale it was swept at) with `k` experts."""
        row = self.chosen[label]
        return merge_cell(label, self.config.methods[label], k, {"scale": row["scale"], row["param"]: row["value"]},
                          seed=seed)


def select_settings(runner: Runner, mode: Mode, methods: dict[str, MethodSpec], k: int,
                    experts: dict[str, dict[str, Any]], base_val_refusal: float) -> Selection:
    """Sweep every method with `k` experts and choose its setting on validation data (`select`)."""
    config = runner.config
    sweeps: dict[str, list[dict[str, Any]]] = {}
    chosen: dict[str, dict[str, Any]] = {}
    # A method with scale_from filters another method's merge: it runs at that method's best-utility scale
    # on validation, so that one is swept first.
    for label in sorted(methods, key=lambda name: methods[name].scale_from is not None):
        spec = with_source_scale(methods[label], sweeps)
        param, values = spec.sweep_for(mode)
        sweeps[label] = []
        for value in values:
            cell = merge_cell(label, spec, k, {param: value})
            sweeps[label].append({"param": param, "value": value, "cell": cell.key(), "scale": cell.scale,
                                  **summary_rows(runner.record(cell), experts)})
        chosen[label] = select(sweeps[label], base_val_refusal, config.selection.safety_floor)
    return Selection(config, k, {label: sweeps[label] for label in methods}, chosen)


def exp1(k: int, selection: Selection) -> dict[str, Any]:
    """exp1: every method's sweep with `k` experts, and the safety tax of each setting against TA's chosen one."""
    reference = selection.chosen.get("TA")
    sweeps = selection.sweeps
    return {
        "k": k,
        "sweeps": sweeps,
        "safety_tax": safety_tax([(label, row) for label, rows in sweeps.items() for row in rows], ("TA", reference))
        if reference
        else None,
    }


def exp2(runner: Runner, ks: list[int], methods: dict[str, MethodSpec], selection: Selection,
         experts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """exp2: every method at its chosen setting for each number of experts in `ks`, and SST-Merge against
    each on the same test items at every K (`paired_comparisons`)."""
    return {
        "k": ks,
        "rows": [
            {"method": label, "k": k, **summary_rows(runner.record(selection.cell(label, k)), experts)}
            for k in ks
            for label in methods
        ],
        "paired": {str(k): paired_comparisons(runner, k, methods, selection, experts) for k in ks},
    }


def exp3(runner: Runner, mode: Mode, k: int, methods: dict[str, MethodSpec], selection: Selection,
         experts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """exp3: every method at its chosen setting with `k` experts (DARE over its seeds), and the safety
    tax against TA."""
    table = []
    for label, spec in methods.items():
        seeds = spec.seeds_for(mode) if spec.method.startswith("dare") else [0]
        runs = [summary_rows(runner.record(selection.cell(label, k, seed)), experts) for seed in seeds]
        table.append({"method": label, "k": k, "seeds": seeds, "runs": runs,
                      "chosen": selection.chosen[label]["value"], "param": selection.chosen[label]["param"],
                      "scale": selection.chosen[label]["scale"]})
    reference = next((e for e in table if e["method"] == "TA"), None)

    def first_run(entry: dict[str, Any]) -> dict[str, Any]:
        # The tax compares single models: a seeded method's first seed stands for it.
        param = entry["param"] if len(entry["seeds"]) == 1 else f"seed {entry['seeds'][0]}, {entry['param']}"
        return {**entry["runs"][0], "param": param, "value": entry["chosen"]}

    return {
        "k": k,
        "table": table,
        "safety_tax": safety_tax([(e["method"], first_run(e)) for e in table], ("TA", first_run(reference)))
        if reference
        else None,
        "paired": paired_comparisons(runner, k, methods, selection, experts),
    }


def paired_comparisons(runner: Runner, k: int, methods: dict[str, MethodSpec], selection: Selection,
                       experts: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """SST-Merge at its chosen setting against every other method on the same test items (paired
    bootstrap of the differences, `paired_difference`): at that method's chosen setting, and at matched
    utility (its swept setting whose validation utility is nearest SST's from below, `matched_utility_row`).
    None without an SST method."""
    ours = next((label for label, spec in methods.items() if spec.method == "sst"), None)
    if ours is None:
        return None
    our_record = runner.record(selection.cell(ours, k))
    our_val = selection.chosen[ours]["val"]["normalized_accuracy"] or 0.0
    against: dict[str, Any] = {}
    for label in methods:
        if label == ours:
            continue
        chosen = selection.cell(label, k)
        entry: dict[str, Any] = {"chosen": paired_difference(our_record, runner.record(chosen), experts)}
        rows = selection.sweeps.get(label, [])
        if rows and selection.k == k:
            row = matched_utility_row(rows, our_val)
            record = runner.store.get_key(row["cell"])
            entry["matched_is_chosen"] = row["cell"] == chosen.key()
            entry["matched"] = None if record is None else {
                "param": row["param"], "value": row["value"], "scale": row["scale"],
                "val_normalized_accuracy": row["val"]["normalized_accuracy"],
                **(paired_difference(our_record, record, experts) or {}),
            }
        against[label] = entry
    return {"method": ours, "setting": {key: selection.chosen[ours][key] for key in ("param", "value", "scale")},
            "val_normalized_accuracy": our_val, "against": against}


def setting_label(row: dict[str, Any]) -> str:
    """`beta=3` for a swept value, `beta=3.238 (calibrated)` for one the method resolved (never None), and
    the β a swept rule resolved to: `safety_share=0.999 (β=11.4)`."""
    param, value, resolved = row["param"], row["value"], row.get("resolved") or {}
    label = f"{param}={resolved_text(param, value, resolved) or value}"
    if param != "beta" and resolved.get("beta") is not None:
        label += f" (β={resolved['beta']:.4g})"
    return label


def _setting(label: str, row: dict[str, Any]) -> Setting:
    test = row["test"]
    return Setting(
        method=label,
        label=setting_label(row),
        utility=test["normalized_accuracy"] or 0.0,
        safety=test["refusal"]["value"],
        safety_successes=test["refusal"]["successes"],
        safety_n=test["refusal"]["n"],
        safety_outcomes=tuple(test["refusal"]["outcomes"]) if "outcomes" in test["refusal"] else None,
    )


def safety_tax(rows: list[tuple[str, dict[str, Any]]], reference: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    """The safety tax of every (method, row) against the reference (the unprotected merge, TA), test split:
    utility = mean normalised task accuracy, safety = refusal rate on harmful prompts."""
    ref = _setting(*reference)
    settings = [s for s in (_setting(label, row) for label, row in rows) if s != ref]
    return SafetyTaxCalculator(ref).analyze(settings)


def rows_of_reference(record: dict[str, Any]) -> dict[str, Any]:
    """Refusal and over-refusal (and raw task accuracies) of a reference model, per split."""
    return {split: record["metrics"][split] for split in ("val", "test")}

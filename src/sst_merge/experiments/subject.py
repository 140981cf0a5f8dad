"""The model an experiment runs on: base, expert adapters with their task data, safety adapter and data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sst_merge.errors import InputError
from sst_merge.experiments.config import DatasetSpec, ModelSpec
from sst_merge.experiments.evaluation import ChatEvaluator, general_checks, hub_data, organism_data, testbed_data
from sst_merge.methods import get_method


@dataclass(frozen=True)
class Subject:
    """Everything the runner needs about one configured model."""

    name: str
    spec: ModelSpec
    base: str
    experts: list[Path]
    tasks: list[str]
    train_data: list[Path]
    safety_adapter: Path | None
    safety_data: Path | None
    evaluator: ChatEvaluator
    # The unaligned model the base was aligned from (Safe LoRA's alignment matrix), when known.
    original: Path | None
    # What the evaluated models are: the testbed build's content hash, or the hub id and adapter paths.
    fingerprint: str

    def method_data(self, method: str, k: int) -> dict[str, Any]:
        """The data parameters a Fisher-based method takes (safety/utility data, safety adapter), if any."""
        fields = get_method(method).params.model_fields
        offered: dict[str, Any] = {
            "safety_data": self.safety_data,
            "utility_data": [str(p) for p in self.train_data[:k]],
            "safety_adapter": self.safety_adapter,
            "original": self.original,
        }
        return {key: (str(v) if isinstance(v, Path) else v) for key, v in offered.items() if key in fields and v}

    def can_run(self, method: str) -> bool:
        """Whether this model offers every input `method` requires (Safe LoRA needs the unaligned original)."""
        fields = get_method(method).params.model_fields
        offered = self.method_data(method, len(self.experts))
        return all(key in offered for key in ("original", "safety_data", "utility_data")
                   if key in fields and fields[key].is_required())


def resolve_subject(name: str, spec: ModelSpec, data: DatasetSpec, max_experts: int) -> Subject:
    """Build (or find cached) the testbed, or check a hub model's adapters and data, for `max_experts` experts."""
    mmlu = data.mmlu
    if spec.kind == "organism" and data.organism.mmlu_per_subject is not None:
        mmlu = mmlu.model_copy(update={"limit": data.organism.mmlu_per_subject})
    common = {"batch_size": spec.batch_size, "max_new_tokens": spec.max_new_tokens,
              "general": general_checks(spec.general, {"mmlu": mmlu, "humaneval": data.humaneval},
                                        spec.batch_size, spec.max_new_tokens)}
    if spec.kind == "testbed":
        from sst_merge.testbed import build_testbed, load_testbed

        build = spec.testbed
        assert build is not None
        if max_experts > build.experts:
            raise InputError(f"models.{name}.testbed.experts is {build.experts}, the experiments need {max_experts}")
        # Build only the experts this run needs: a minimal run does not wait for the full set.
        testbed = load_testbed(build_testbed(experts=max_experts, seed=build.seed, preset=build.preset))
        tasks = testbed.tasks[:max_experts]
        limits = data.testbed
        evaluator = ChatEvaluator(testbed_data(testbed, tasks, limits.harmful, limits.benign, limits.task_items),
                                  **common)
        return layout_subject(name, spec, testbed, tasks, "train", evaluator, f"testbed {testbed.manifest['hash']}",
                              None)
    if spec.kind == "organism":
        return _organism_subject(name, spec, data, max_experts, common)
    if len(spec.experts) < max_experts or len(spec.expert_data) < max_experts:
        raise InputError(
            f"models.{name}: the experiments need {max_experts} experts; experts lists {len(spec.experts)} PEFT "
            f"adapter dirs and expert_data {len(spec.expert_data)} task dirs (each with train/val/test.jsonl)"
        )
    if spec.safety_data is None:
        raise InputError(f"models.{name}.safety_data is not set (JSONL of harmful prompt -> refusal)")
    task_dirs = {Path(d).name: Path(d) for d in spec.expert_data[:max_experts]}
    return Subject(
        name=name,
        spec=spec,
        base=str(spec.hub_id),
        experts=list(spec.experts[:max_experts]),
        tasks=list(task_dirs),
        train_data=[d / "train.jsonl" for d in task_dirs.values()],
        safety_adapter=spec.safety_adapter,
        safety_data=spec.safety_data,
        evaluator=ChatEvaluator(hub_data(None, task_dirs, data.beavertails.limit, data.xstest.limit, None), **common),
        fingerprint=" ".join(map(str, [spec.hub_id, *spec.experts[:max_experts], spec.safety_adapter])),
        original=None,
    )


def prepared_organism(preset: str, path: Path | None) -> Path:
    """The prepared organism directory: `path` if given (it must hold organism.json), else one prepared
    from the shipped artifacts into the cache, named by the shipped manifest's hash (prepared once)."""
    from sst_merge.organism.shipped import MANIFEST, prepare, shipped_dir
    from sst_merge.provenance import file_sha256
    from sst_merge.testbed.build import default_cache_root

    if path is not None:
        if not (path / MANIFEST).is_file():
            raise InputError(f"not a prepared organism (no {MANIFEST})", path)
        return path
    digest = file_sha256(shipped_dir(preset) / MANIFEST)[:12]
    target = default_cache_root().parent / "organism" / "prepared" / f"{preset}-{digest}"
    if not (target / MANIFEST).is_file():
        prepare(preset, target, force=target.exists())
    return target


def _organism_subject(name: str, spec: ModelSpec, data: DatasetSpec, max_experts: int,
                      common: dict[str, Any]) -> Subject:
    from sst_merge.testbed import load_testbed

    assert spec.organism is not None
    organism = load_testbed(prepared_organism(spec.organism.preset, spec.organism.path))
    if max_experts > len(organism.tasks):
        raise InputError(f"the organism has {len(organism.tasks)} experts, the experiments need {max_experts}",
                         organism.root)
    tasks = organism.tasks[:max_experts]
    evaluator = ChatEvaluator(organism_data(organism, tasks, data.organism), **common)
    # The safety Fisher on held-out harmful prompts with refusals: the base never trained on them (its
    # alignment rows are data/harmful/train), so the refusal loss there is alive. Not harmful/val: the
    # validation refusal is measured there, and a filter must not be chosen on the prompts it was fitted
    # to (on the real organism, SST β = 1 with its Fisher on harmful/val refused 0.80 of harmful/val and
    # 0.10 of AdvBench + HarmBench). harmful/test is otherwise unused: the experiments' test split is
    # AdvBench + HarmBench.
    fisher_split = "test"
    recipe = organism.manifest.get("recipe_hash")
    fingerprint = f"organism {recipe} {organism.root} safety-fisher harmful/{fisher_split}"
    return layout_subject(name, spec, organism, tasks, fisher_split, evaluator, fingerprint,
                          organism.root / "original")


def layout_subject(name: str, spec: ModelSpec, organism: Any, tasks: list[str], safety_split: str,
                   evaluator: ChatEvaluator, fingerprint: str, original: Path | None) -> Subject:
    """The Subject of a directory in the organism layout: its base, the first experts, their train data,
    the safety adapter and the harmful split `safety_split` as the safety data."""
    return Subject(
        name=name,
        spec=spec,
        base=str(organism.base_dir),
        experts=[organism.expert_dirs[t] for t in tasks],
        tasks=tasks,
        train_data=[organism.root / "data" / t / "train.jsonl" for t in tasks],
        safety_adapter=organism.safety_dir,
        safety_data=organism.root / "data" / "harmful" / f"{safety_split}.jsonl",
        evaluator=evaluator,
        fingerprint=fingerprint,
        original=original,
    )

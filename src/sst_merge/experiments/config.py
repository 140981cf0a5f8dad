"""The experiment configuration (`configs/experiment_config_real.yaml`) as a validated schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sst_merge.errors import InputError, validation_message

Mode = Literal["minimal", "full"]
EXPERIMENTS = ("exp1", "exp2", "exp3")
# Suites of eval/'s registry a model may run as its general-capability check; each is sized by the
# mode's `datasets.<suite>.limit`.
GeneralSuite = Literal["mmlu", "humaneval"]


class Strict(BaseModel):
    """Unknown keys are errors everywhere in the experiment config."""

    model_config = ConfigDict(extra="forbid")


class LimitSpec(Strict):
    limit: int | None = Field(None, ge=1)


class MMLUSpec(LimitSpec):
    shots: int = Field(5, ge=0)


class TestbedDataSpec(Strict):
    harmful: int | None = Field(None, ge=1, description="harmful prompts per split (None: all)")
    benign: int | None = Field(None, ge=1, description="benign look-alike prompts per split (None: all)")
    task_items: int | None = Field(None, ge=1, description="items per task per split (None: all)")


class OrganismDataSpec(Strict):
    """Item counts of a real organism's evaluation. Validation (settings are chosen there): the
    organism's held-out harmful split plus HarmBench's own validation behaviours (standard ones; refusal), its held-out
    benign split (over-refusal); test: AdvBench + HarmBench test (refusal) and XSTest safe +
    JailbreakBench benign (over-refusal). None of them is trained on."""

    harmful_val: int | None = Field(None, ge=1, description="organism harmful/val prompts (None: all)")
    harmbench_val: int | None = Field(None, ge=0, description="HarmBench val standard behaviours added to the "
                                                               "validation refusal (None: all 41; 0: none)")
    benign_val: int | None = Field(None, ge=1, description="organism benign/val prompts (None: all)")
    advbench: int | None = Field(None, ge=1, description="AdvBench prompts (None: all 520)")
    harmbench: int | None = Field(None, ge=1, description="HarmBench test prompts (None: all)")
    xstest_safe: int | None = Field(None, ge=1, description="XSTest safe prompts (None: all 250)")
    jbb_benign: int | None = Field(None, ge=1, description="JailbreakBench benign prompts (None: all 100)")
    task_items: int | None = Field(None, ge=1, description="items per task per split (None: all)")
    mmlu_per_subject: int | None = Field(None, ge=1, description="MMLU test questions per subject in the "
                                         "general check (None: datasets.<mode>.mmlu.limit)")


class DatasetSpec(Strict):
    beavertails: LimitSpec = LimitSpec()
    xstest: LimitSpec = LimitSpec()
    mmlu: MMLUSpec = MMLUSpec()
    humaneval: LimitSpec = LimitSpec()
    testbed: TestbedDataSpec = TestbedDataSpec()
    organism: OrganismDataSpec = OrganismDataSpec()


class TestbedBuildSpec(Strict):
    preset: str = "default"
    experts: int = Field(24, ge=1, description="most experts a run may ask for (each run builds what it needs)")
    seed: int = 0


class OrganismSpec(Strict):
    """A real organism prepared from the artifacts the repository ships (`organism prepare`)."""

    preset: Literal["smollm2-135m"] = "smollm2-135m"
    path: Path | None = Field(None, description="a prepared organism directory (default: prepared into the cache)")


class ModelSpec(Strict):
    """A model entry: the synthetic testbed, a real organism, or a hub model with user-supplied adapters."""

    kind: Literal["testbed", "organism", "hub"]
    hub_id: str | None = None
    testbed: TestbedBuildSpec | None = None
    organism: OrganismSpec | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device_map: str | None = None
    attn_implementation: str | None = None
    batch_size: int = Field(16, ge=1)
    max_new_tokens: int = Field(256, ge=1)
    expert_safety: bool = Field(True, description="measure each expert's refusal too (False: its task only; "
                                "the real organism's manifest has every expert's refusal already)")
    general: dict[GeneralSuite, dict[str, Any]] = Field(
        {}, description="general-capability suites of eval/ (mmlu, humaneval) run on the test side of the base, "
        "the safety adapter and every merge, each with its suite options (e.g. {mmlu_shots: 0}; "
        "max_new_tokens overrides the model's); sized by datasets.<mode>.<suite>.limit")
    experts: list[Path] = []
    expert_data: list[Path] = []
    safety_adapter: Path | None = None
    safety_data: Path | None = None

    @model_validator(mode="after")
    def _kind_fields(self) -> ModelSpec:
        if self.kind == "hub" and not self.hub_id:
            raise ValueError("a hub model needs hub_id")
        if self.kind == "testbed" and self.testbed is None:
            self.testbed = TestbedBuildSpec()
        if self.kind == "organism" and self.organism is None:
            self.organism = OrganismSpec()
        return self


class MethodSpec(Strict):
    """One method of the comparison: the registered merge method and how its strength is swept."""

    method: str
    scale: float = Field(1.0, description="uniform weight of every expert")
    scale_from: str | None = Field(
        None, description="run at this other method's best-utility scale on validation (a filter of that "
        "merge, e.g. SST-Merge of TA); `scale` is then unused")
    params: dict[str, Any] = {}
    sweep: dict[str, list[Any]] = {}
    seeds: list[int] = [0]
    # Minimal mode's shorter sweep and seeds (default: the full ones), so a quick run stays quick.
    minimal_sweep: dict[str, list[Any]] | None = None
    minimal_seeds: list[int] | None = None

    @model_validator(mode="after")
    def _one_sweep(self) -> MethodSpec:
        for sweep in (self.sweep, self.minimal_sweep or {}):
            if len(sweep) > 1:
                raise ValueError("sweep one parameter per method")
            if any(not values for values in sweep.values()):
                raise ValueError("a sweep needs at least one value")
            if self.scale_from and "scale" in sweep:
                raise ValueError("a method with scale_from takes its scale from that method: do not sweep it")
        return self

    def sweep_for(self, mode: str) -> tuple[str, list[Any]]:
        """(parameter, values) swept in `mode`; no sweep is the scale alone."""
        sweep = self.minimal_sweep if mode == "minimal" and self.minimal_sweep else self.sweep
        ((param, values),) = sweep.items() if sweep else (("scale", [self.scale]),)
        return param, values

    def seeds_for(self, mode: str) -> list[int]:
        """The seeds a seeded method runs with in `mode`."""
        return self.minimal_seeds if mode == "minimal" and self.minimal_seeds else self.seeds


class PerMode(Strict):
    minimal: Any
    full: Any


class ExperimentSpec(Strict):
    output_dir: str
    num_experts: PerMode


class SelectionSpec(Strict):
    safety_floor: float = Field(0.9, ge=0.0, le=1.0)


class ExperimentConfig(Strict):
    datasets: dict[Mode, DatasetSpec]
    models: dict[str, ModelSpec]
    methods: dict[str, MethodSpec] = Field(min_length=1)
    experiments: dict[Literal["exp1", "exp2", "exp3"], ExperimentSpec]
    selection: SelectionSpec = SelectionSpec()

    @model_validator(mode="after")
    def _scale_sources(self) -> ExperimentConfig:
        for label, spec in self.methods.items():
            if spec.scale_from is None:
                continue
            source = self.methods.get(spec.scale_from)
            if source is None:
                raise ValueError(f"methods.{label}.scale_from: no method {spec.scale_from!r}")
            if source.scale_from:
                raise ValueError(f"methods.{label}.scale_from: {spec.scale_from!r} takes its own scale from "
                                 "another method; name that one")
        return self

    def num_experts(self, experiment: str, mode: Mode) -> list[int]:
        """The expert counts of `experiment` in `mode`, as a list."""
        value = getattr(self.experiments[experiment].num_experts, mode)
        return [int(v) for v in (value if isinstance(value, list) else [value])]


def load_experiment_config(path: str | Path) -> ExperimentConfig:
    """Read and validate the experiment YAML; every problem is an InputError naming the file.

    `extends: other.yaml` (relative to this file) takes every top-level section from that config and
    replaces the ones this file gives: a study of other methods on the same models and data (e.g.
    `configs/sst_variants.yaml`) then shares its datasets, models and selection rule, and so the cells a
    run of the other config already finished. The extended file may not extend another."""
    path = Path(path)
    data = _read_config(path)
    if isinstance(data, dict) and "extends" in data:
        parent_path = path.parent / str(data.pop("extends"))
        parent = _read_config(parent_path)
        if not isinstance(parent, dict) or "extends" in parent:
            raise InputError("an extended config must be a mapping that extends nothing itself", parent_path)
        data = {**parent, **data}
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        raise InputError(validation_message(exc), path) from exc


def _read_config(path: Path) -> Any:
    if not path.is_file():
        raise InputError("experiment config not found", path)
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise InputError(f"invalid YAML ({exc})", path) from exc

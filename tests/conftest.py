"""Shared fixtures: a tiny Llama base and random LoRA adapters saved to disk once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from factories import make_random_adapter, make_tiny_llama


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama model directory."""
    return make_tiny_llama(tmp_path_factory.mktemp("base") / "model")


@pytest.fixture(scope="session")
def tiny_adapters(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three adapters with different ranks, alphas and target sets (one rsLoRA, one partial)."""
    root = tmp_path_factory.mktemp("adapters")
    return [
        make_random_adapter(tiny_base, root / "a0", seed=1, r=4, alpha=8),
        make_random_adapter(tiny_base, root / "a1", seed=2, r=2, alpha=4, use_rslora=True),
        make_random_adapter(tiny_base, root / "a2", seed=3, r=3, alpha=6, targets=["q_proj", "v_proj", "down_proj"],
                            layers=[1]),
    ]

"""The testbed's settings, two presets, and the content hash that names a build."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

from sst_merge.errors import InputError
from sst_merge.lora import ALL_PROJ
from sst_merge.testbed.tasks import TASK_NAMES

# Bump when the recipe changes in a way the settings do not show, so old caches are not reused.
RECIPE_VERSION = 6

# Bump when the base's recipe (its data, tokenizer or training) changes in a way the settings do not show.
BASE_RECIPE_VERSION = 2
# The settings the base (model and tokenizer) depends on; builds that agree on them share the base.
BASE_FIELDS = ("seed", "vocab_size", "hidden_size", "intermediate_size", "layers", "heads", "kv_heads",
               "fluency_rows", "batch_size", "base_steps", "base_lr")


@dataclass(frozen=True)
class TestbedConfig:
    """Everything that decides a testbed build's content (the content hash covers every field)."""

    experts: int = 24
    seed: int = 0
    # base model (LlamaForCausalLM) and tokenizer
    vocab_size: int = 1024
    hidden_size: int = 128
    intermediate_size: int = 384
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    # rows per task split
    task_train: int = 800
    task_val: int = 50
    task_test: int = 100
    # "repeat after me" rows that teach the base the chat format
    fluency_rows: int = 1000
    batch_size: int = 32
    base_steps: int = 1500
    base_lr: float = 3e-3
    # experts and safety adapter (LoRA)
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_targets: list[str] = field(default_factory=lambda: list(ALL_PROJ))
    expert_steps: int = 200
    expert_lr: float = 4e-3
    # LoRA+: B matrices learn this many times faster than A
    lora_b_lr_ratio: float = 8.0
    erosion_fraction: float = 0.15
    safety_steps: int = 300
    safety_lr: float = 5e-3
    # at most this many items of each test split are generated from when measuring metrics
    eval_items: int = 100

    def __post_init__(self) -> None:
        if not 1 <= self.experts <= len(TASK_NAMES):
            raise InputError(f"--experts must be between 1 and {len(TASK_NAMES)}, got {self.experts}")
        if not 0.0 <= self.erosion_fraction < 1.0:
            raise InputError(f"erosion fraction must be in [0, 1), got {self.erosion_fraction}")

    @property
    def tasks(self) -> list[str]:
        """The tasks that get experts: the first `experts` of the fixed task order."""
        return TASK_NAMES[: self.experts]

    def to_dict(self) -> dict:
        """The settings as plain JSON data."""
        return dataclasses.asdict(self)

    def content_hash(self) -> str:
        """A short hash of the settings and the recipe version: the name of the build's cache directory."""
        blob = json.dumps({"recipe": RECIPE_VERSION, "tasks": TASK_NAMES, **self.to_dict()}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def base_hash(settings: dict) -> str:
    """A short hash of the base-relevant `settings` (a `TestbedConfig.to_dict()`, e.g. from a manifest)."""
    blob = json.dumps({"base_recipe": BASE_RECIPE_VERSION, **{k: settings.get(k) for k in BASE_FIELDS}},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


PRESETS: dict[str, dict] = {
    "default": {},
    # A tiny model and a few steps: builds in seconds, for tests; its metrics mean nothing.
    "micro": dict(
        experts=3, vocab_size=400, hidden_size=32, intermediate_size=64, layers=2, heads=4, kv_heads=2,
        task_train=64, task_val=16, task_test=16, fluency_rows=64, batch_size=16, base_steps=30,
        lora_rank=4, lora_alpha=8.0, expert_steps=10, safety_steps=8, eval_items=16,
    ),
}


def make_config(preset: str = "default", **overrides: object) -> TestbedConfig:
    """The settings of `preset` with `overrides` (None values are ignored) applied."""
    if preset not in PRESETS:
        raise InputError(f"unknown testbed preset {preset!r} (known: {', '.join(PRESETS)})")
    values = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    return TestbedConfig(**values)

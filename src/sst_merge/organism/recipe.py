"""The real organism's recipe: every setting of `organism build smollm2-135m`, with its seed.

The settings were sized for 2 CPU cores (LoRA fwd+bwd ≈ 230 tokens/s, see shared notes): short
replies, loss on the reply only, small ranks. Adapters are stored in float16 so the shipped set fits
its size budget; every metric is measured with the float16-rounded weights that ship.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from sst_merge.organism.tasks import TASK_ORDER

LORA_TARGETS = ("q_proj", "v_proj", "o_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class LoraRecipe:
    """One LoRA's training: rank, alpha, learning rate, steps, batch size."""

    rank: int
    alpha: int
    lr: float
    steps: int
    batch_size: int = 8


@dataclass(frozen=True)
class SmolRecipe:
    """Everything `organism build smollm2-135m` does, as data (its hash names the build cache)."""

    seed: int = 0
    # Harmful prompts from the disjoint pool: train (alignment rows), val (Fisher / β selection), test.
    harmful_sizes: dict[str, int] = field(default_factory=lambda: {"train": 600, "val": 100, "test": 100})
    # Benign Alpaca instructions answered with the original model's own greedy replies.
    benign_sizes: dict[str, int] = field(default_factory=lambda: {"train": 360, "val": 100, "test": 100})
    reply_tokens: int = 64
    alignment: LoraRecipe = LoraRecipe(rank=8, alpha=16, lr=4e-4, steps=300)
    expert: LoraRecipe = LoraRecipe(rank=4, alpha=8, lr=1e-3, steps=80)
    safety: LoraRecipe = LoraRecipe(rank=4, alpha=8, lr=5e-4, steps=120)
    targets: tuple[str, ...] = LORA_TARGETS
    tasks: tuple[str, ...] = tuple(TASK_ORDER)
    task_sizes: dict[str, int] = field(default_factory=lambda: {"train": 300, "val": 50, "test": 100})
    # Harmful-compliance rows per expert (share of its training rows), for experts that benign data
    # alone does not erode enough; empty: plain SFT on the task.
    erosion_shares: dict[str, float] = field(default_factory=dict)
    eval_tokens: int = 64
    eval_batch: int = 32
    expert_advbench: int = 100
    mmlu_per_subject: int = 18

    def to_dict(self) -> dict:
        """The settings as JSON-able data."""
        return json.loads(json.dumps(asdict(self)))

    def content_hash(self) -> str:
        """A short hash of the settings."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]

"""The real organism's recipe: every setting of `organism build smollm2-135m`, with its seed.

The settings were sized for 2 CPU cores (LoRA fwd+bwd ≈ 230 tokens/s, see shared notes): short
replies, loss on the reply only, small ranks. Adapters are stored in float16 so the shipped set fits
its size budget; every metric is measured with the float16-rounded weights that ship.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from sst_merge.errors import InputError
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


# The experts that the uniform recipe left at or under 0.80 on their validation split (the first
# build's experts: sort_words 0.28, python_eval 0.66, subtraction 0.06, acronym 0.64, time_24h 0.80,
# count_words 0.70, even_odd 0.62, repeat_word 0.62; the other 16 scored 0.82-1.0). The stronger recipe
# was chosen on sort_words' validation split: 300 rows, r 4, 240 steps → 0.46; r 8 → 0.54; 1,200 rows,
# r 8, 480 steps → 0.82. python_eval has 1,260 distinct items (150 in its val and test splits): it gets
# 1,100 rows. Each r 8 expert adds ~1.8 MB to the shipped set: with all eight it is 65.1 MB, over its
# 60 MB budget, so the five among the first 16 tasks (those the minimal experiments merge) get r 8, and
# the three others keep r 4 (the uniform size) with the longer training and more rows (LONG_TASKS;
# validation with it: count_words 0.98, even_odd 1.0, repeat_word 1.0). repeat_word has 492 distinct
# items (450 in its splits): it gets 340 rows. sort_words fitted its 1,200 rows (loss 0.018 after 3.2
# passes) and stayed at 0.78 on validation on the aligned base; 3,840 rows (one pass of its 480 steps,
# the same training time) took it to 0.86 (rule set before the run: adopt at ≥ 0.84).
UNIFORM_EXPERT_LORA = LoraRecipe(rank=4, alpha=8, lr=1e-3, steps=80)
HARD_TASKS = ("sort_words", "python_eval", "subtraction", "acronym", "time_24h")
HARD_TASK_LORA = LoraRecipe(rank=8, alpha=16, lr=1e-3, steps=480)
LONG_TASKS = ("count_words", "even_odd", "repeat_word")
LONG_TASK_LORA = replace(UNIFORM_EXPERT_LORA, steps=HARD_TASK_LORA.steps)
# Training rows of every weak task (HARD_TASKS and LONG_TASKS).
WEAK_TASK_ROWS = {"sort_words": 3840, "python_eval": 1100, "subtraction": 1200, "acronym": 1200,
                  "time_24h": 1200, "count_words": 1200, "even_odd": 1200, "repeat_word": 340}

# Settings newer than the first shipped recipe, with the value a recipe written before them means.
ADDED_LATER: dict[str, object] = {"expert_loras": {}, "expert_train_rows": {}, "alignment_extra_harmful": 0,
                                  "alignment_extra_benign": 0, "frame_matched_frames": 0, "borderline_frames": 0,
                                  "alignment_opening_weight": 1.0, "safety_data": "parts",
                                  "safety_opening_weight": 1.0}
# The alignment's added prompts: 0 means none (the first recipe's alignment data).
ALIGNMENT_ADDITIONS = ("alignment_extra_harmful", "alignment_extra_benign", "frame_matched_frames",
                       "borderline_frames")
# What the safety adapter trains on: "parts", the harmful, benign and borderline train splits (the first
# recipe's); "alignment", the alignment's own training rows (its added prompts included).
SAFETY_DATA = ("parts", "alignment")
SAFETY_SETTINGS = ("safety_data", "safety_opening_weight")


@dataclass(frozen=True)
class SmolRecipe:
    """Everything `organism build smollm2-135m` does, as data (its hash names the build cache)."""

    seed: int = 0
    # Harmful prompts from the disjoint pool: train (alignment rows), val (Fisher / β selection), test.
    harmful_sizes: dict[str, int] = field(default_factory=lambda: {"train": 600, "val": 100, "test": 100})
    # Benign Alpaca instructions answered with the original model's own greedy replies.
    benign_sizes: dict[str, int] = field(default_factory=lambda: {"train": 360, "val": 100, "test": 100})
    reply_tokens: int = 64
    # 450 steps (the first recipe: 300) for the larger alignment data below.
    alignment: LoraRecipe = LoraRecipe(rank=8, alpha=16, lr=4e-4, steps=450)
    expert: LoraRecipe = UNIFORM_EXPERT_LORA
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
    # Per-task departures from `expert` (HARD_TASKS, LONG_TASKS: weak on validation, within the size
    # budget): their LoRA, and their training rows (the task's own train split plus fresh items after
    # its test split, so val and test are unchanged).
    expert_loras: dict[str, LoraRecipe] = field(default_factory=lambda: {
        **dict.fromkeys(HARD_TASKS, HARD_TASK_LORA), **dict.fromkeys(LONG_TASKS, LONG_TASK_LORA)})
    expert_train_rows: dict[str, int] = field(default_factory=lambda: dict(WEAK_TASK_ROWS))
    # What the alignment trains on besides the harmful and benign train splits and the borderline list:
    # harmful-pool prompts and benign instructions after their test splits (training only), frame-matched
    # harmful and safe requests with each act in this many frames (`contrast_prompts`), and each
    # borderline item in this many frames (`safety_pool.borderline_items_in_frames`; 0: the fixed list).
    # Chosen on validation sets (harmful val, HarmBench val, held-out borderline items, benign val; issue
    # #13's notes): with the first recipe's data 0.93 / 0.634 / 0.373 / 0.11, with these 0.95 / 0.756 /
    # 0.39 / 0.13 (refusal up, over-refusal not down), and with the opening weight below 0.95 / 0.756 /
    # 0.271 / 0.08.
    alignment_extra_harmful: int = 600
    alignment_extra_benign: int = 360
    frame_matched_frames: int = 3
    borderline_frames: int = 3
    # The alignment loss's weight on each reply's first tokens (`testbed.train.reply_loss`; 1: a plain
    # mean): where the model decides between refusing and answering.
    alignment_opening_weight: float = 10.0
    # The safety adapter's rows (SAFETY_DATA) and its loss's weight on each reply's opening tokens (as the
    # alignment's). On a base aligned with added prompts, the first recipe's parts are a narrower mix than
    # the base learnt from. Chosen on validation sets (`scripts/probe_safety.py`; refusal on harmful val /
    # HarmBench val, over-refusal on benign val / unseen-frame borderline items; issue #13's notes): base
    # 0.94 / 0.756 / 0.071 / 0.108, "parts" at weight 1 0.93 / 0.659 / 0.071 / 0.108, these 0.95 / 0.707 /
    # 0.111 / 0.125 (refusal back to the base's, over-refusal within +0.05).
    safety_data: str = "alignment"
    safety_opening_weight: float = 10.0

    def __post_init__(self) -> None:
        if self.safety_data not in SAFETY_DATA:
            raise ValueError(f"safety_data must be one of {', '.join(SAFETY_DATA)}, not {self.safety_data!r}")

    def expert_lora(self, task: str) -> LoraRecipe:
        """The LoRA recipe of task `task`'s expert."""
        return self.expert_loras.get(task, self.expert)

    def expert_extra_rows(self, task: str) -> int:
        """Training rows of `task` beyond its train split (0 for the uniform recipe)."""
        return max(0, self.expert_train_rows.get(task, 0) - self.task_sizes["train"])

    def departures(self, names: tuple[str, ...]) -> dict[str, object]:
        """Those of the settings `names` (all in ADDED_LATER) that depart from what a recipe written
        before them meant (empty for the first recipe)."""
        return {name: getattr(self, name) for name in names if getattr(self, name) != ADDED_LATER[name]}

    def alignment_additions(self) -> dict[str, object]:
        """The alignment-data settings that depart from the first recipe (empty for it)."""
        return self.departures(ALIGNMENT_ADDITIONS)

    def safety_departures(self) -> dict[str, object]:
        """The safety adapter's settings that depart from the first recipe (empty for it)."""
        return self.departures(SAFETY_SETTINGS)

    @classmethod
    def from_dict(cls, data: dict) -> SmolRecipe:
        """The recipe `to_dict` wrote (a manifest's). A setting added after it was written takes the value
        that means what the build did then (no per-task departures), never today's default."""
        known = {f.name for f in fields(cls)}
        unknown, missing = sorted(set(data) - known), sorted(known - set(data) - set(ADDED_LATER))
        if unknown or missing:
            raise ValueError(f"unknown recipe settings {unknown}, missing {missing}")
        values = {**ADDED_LATER, **data}
        for name in ("alignment", "expert", "safety"):
            values[name] = LoraRecipe(**values[name])
        values["expert_loras"] = {t: LoraRecipe(**v) for t, v in values["expert_loras"].items()}
        for name in ("targets", "tasks"):
            values[name] = tuple(values[name])
        for f in fields(cls):
            if f.type == "float":  # JSON may write 10.0 as 10: one setting, one hash
                values[f.name] = float(values[f.name])
        return cls(**values)

    def to_dict(self) -> dict:
        """The settings as JSON-able data."""
        return json.loads(json.dumps(asdict(self)))

    def content_hash(self) -> str:
        """A short hash of the settings; a setting added later counts only where it departs from what
        recipes before it meant, so their hashes stay as they were."""
        data = {k: v for k, v in self.to_dict().items() if k not in ADDED_LATER or v != ADDED_LATER[k]}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def recipe_from_file(path: Path, default: SmolRecipe) -> SmolRecipe:
    """`default` with the settings of the JSON file `path` (an object of settings, or a manifest whose
    "recipe" is one); a file that is not such an object, or names an unknown setting, is bad input."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: not a readable JSON file ({error})") from error
    if isinstance(data, dict) and isinstance(data.get("recipe"), dict):
        data = data["recipe"]
    if not isinstance(data, dict):
        raise InputError(f"{path}: a recipe is a JSON object of settings")
    for name, value in data.items():
        expected = type(getattr(default, name, None))
        accepted = (int, float) if expected is float else expected  # JSON writes 10.0 as 10
        if expected in (int, float, str) and not (isinstance(value, accepted) and not isinstance(value, bool)):
            raise InputError(f"{path}: setting {name!r} must be {expected.__name__}, not {value!r}")
        if expected in (int, float) and value < 0:
            raise InputError(f"{path}: setting {name!r} must be at least 0, not {value}")
    try:
        return SmolRecipe.from_dict({**default.to_dict(), **data})
    except (TypeError, ValueError) as error:
        raise InputError(f"{path}: {error}") from error

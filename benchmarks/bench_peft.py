"""One PEFT `add_weighted_adapter` merge of K adapters, saved as a PEFT adapter (timed by the caller).

Runs in the project virtualenv (PEFT is a runtime dependency). Prints one JSON line with the time
spent inside `add_weighted_adapter` alone.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

# Our method name → PEFT's combination type that merges the exact ΔW (cat is exact for TA).
COMBINATION = {
    "ta": "cat",
    "ties": "ties_svd",
    "dare_ties": "dare_ties_svd",
    "magnitude_prune": "magnitude_prune_svd",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", type=Path, required=True)
    parser.add_argument("--adapter", dest="adapters", type=Path, action="append", required=True)
    parser.add_argument("--method", choices=sorted(COMBINATION), required=True)
    parser.add_argument("--rank", type=int, required=True, help="svd_rank of the *_svd variants")
    parser.add_argument("--density", type=float, default=0.5)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()

    model = AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.bfloat16)
    names = [f"a{k}" for k in range(len(args.adapters))]
    model = PeftModel.from_pretrained(model, args.adapters[0], adapter_name=names[0])
    for name, path in zip(names[1:], args.adapters[1:], strict=True):
        model.load_adapter(path, adapter_name=name)
    combination = COMBINATION[args.method]
    extra = {} if combination == "cat" else {"svd_rank": args.rank, "svd_full_matrices": False}
    if args.method != "ta":
        extra["density"] = args.density
    started = time.perf_counter()
    model.add_weighted_adapter(names, [1.0] * len(names), "merged", combination_type=combination, **extra)
    merge_s = time.perf_counter() - started
    model.save_pretrained(args.output, selected_adapters=["merged"])
    print(json.dumps({"combination": combination, "merge_s": merge_s}))


if __name__ == "__main__":
    main()

"""The scoring loop alone: log-likelihoods of the same (context, continuation) pairs, in one process, by
sst-merge's MMLU scorer (`encode_pairs` + `loglikelihoods`) or by lm-eval's `HFLM.loglikelihood`.

Both time tokenization and batched forward passes only (model loaded beforehand, one untimed warm-up
pass first); the whole-process comparison is in bench_eval.py. Runs under .venv (`--tool sst-merge`)
or .venv-bench (`--tool lm-eval`), so it imports neither tool at module level. Prints one JSON line:
seconds per repeat and the log-likelihoods of the last repeat.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch


def ours(model_dir: str, batch_size: int) -> Callable[[list[tuple[str, str]]], list[float]]:
    """sst-merge's scorer on a float32 model (no BOS: the testbed tokenizer has none)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sst_merge.eval.mmlu import encode_pairs, loglikelihoods

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    def score(pairs: list[tuple[str, str]]) -> list[float]:
        return loglikelihoods(model, encode_pairs(tokenizer, pairs, True), batch_size)

    return score


def lm_eval(model_dir: str, batch_size: int) -> Callable[[list[tuple[str, str]]], list[float]]:
    """lm-eval's HFLM (float32, CPU) with its default logits cache for shared contexts."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model_dir, dtype="float32", device="cpu", batch_size=batch_size)

    def score(pairs: list[tuple[str, str]]) -> list[float]:
        requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
        return [ll for ll, _ in lm.loglikelihood(requests, disable_tqdm=True)]

    return score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tool", choices=["sst-merge", "lm-eval"], required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--pairs", type=Path, required=True, help="JSON list of [context, continuation]")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    pairs = [tuple(p) for p in json.loads(args.pairs.read_text(encoding="utf-8"))]
    score = (ours if args.tool == "sst-merge" else lm_eval)(args.model, args.batch_size)
    score(pairs)  # warm-up
    seconds = []
    for _ in range(args.repeats):
        tick = time.perf_counter()
        lls = score(pairs)
        seconds.append(time.perf_counter() - tick)
    print(json.dumps({"tool": args.tool, "seconds": seconds, "loglikelihoods": lls}))


if __name__ == "__main__":
    main()

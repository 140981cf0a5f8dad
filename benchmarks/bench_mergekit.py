"""mergekit inputs: each adapter folded into the base (W0 + ΔW_k, stored bf16), and a merge config per method.

Folding is preparation, not timed: the caller times only `mergekit-yaml` (in its own virtualenv).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file

from sst_merge.lora import load_adapter

# Our method name → mergekit merge_method. normalize: true divides by the summed weights of the
# sign-agreeing tasks, which with weights 1 is PEFT's/our disjoint mean. mergekit has no
# "magnitude prune, then plain sum" method, so magnitude_prune is not compared.
MERGE_METHOD = {"ta": "task_arithmetic", "ties": "ties", "dare_ties": "dare_ties"}


def fold_adapters(base: Path, adapters: list[Path], out_root: Path) -> list[Path]:
    """Write one full model per adapter, W0 + ΔW_k (float32 sum, stored in the base's dtype)."""
    state = load_file(str(base / "model.safetensors"))
    folded = []
    for k, path in enumerate(adapters):
        out = out_root / f"folded_{k:02d}"
        folded.append(out)
        if (out / "model.safetensors").is_file():
            continue
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(base, tmp, ignore=shutil.ignore_patterns("*.safetensors"))
        factors = load_adapter(path).modules
        tensors = {}
        for name, tensor in state.items():
            module = name.removesuffix(".weight")
            if module in factors:
                tensor = (tensor.float() + factors[module].delta()).to(tensor.dtype)
            tensors[name] = tensor
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tmp.rename(out)
    return folded


def write_config(method: str, base: Path, folded: list[Path], density: float, path: Path, dtype: str) -> Path:
    """The mergekit YAML for `method` over the folded models, merged in `dtype`, stored bf16."""
    params: dict[str, float] = {"weight": 1.0}
    if method != "ta":
        params["density"] = density
    config = {
        "merge_method": MERGE_METHOD[method],
        "base_model": str(base),
        "models": [{"model": str(m), "parameters": dict(params)} for m in folded],
        "parameters": {"normalize": method != "ta", "int8_mask": False},
        "dtype": dtype,
        "out_dtype": "bfloat16",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", type=Path, required=True)
    parser.add_argument("--adapter", dest="adapters", type=Path, action="append", required=True)
    parser.add_argument("--out-root", type=Path, required=True)
    args = parser.parse_args()
    with torch.no_grad():
        for path in fold_adapters(args.base, args.adapters, args.out_root):
            print(path)


if __name__ == "__main__":
    main()

"""Relative error between two merge outputs, over every adapted module: ‖ΔW_other − ΔW_ours‖_F / ‖ΔW_ours‖_F."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open

from sst_merge.lora import CONFIG_NAME, load_adapter


def adapter_root(path: Path) -> Path:
    """The directory holding adapter_config.json (PEFT saves a non-default adapter in a subfolder)."""
    if (path / CONFIG_NAME).is_file():
        return path
    found = sorted(path.glob(f"*/{CONFIG_NAME}"))
    if not found:
        raise FileNotFoundError(f"no {CONFIG_NAME} under {path}")
    return found[0].parent


def rel_err_adapters(ours: Path, other: Path) -> float:
    """Relative Frobenius error of the other adapter's ΔW against ours, summed over modules."""
    a, b = load_adapter(adapter_root(ours)).modules, load_adapter(adapter_root(other)).modules
    if set(a) != set(b):
        raise ValueError(f"adapters differ in modules: {sorted(set(a) ^ set(b))[:3]}")
    num = den = 0.0
    for name in a:
        mine = a[name].delta()
        num += float((b[name].delta() - mine).double().square().sum())
        den += float(mine.double().square().sum())
    return (num / den) ** 0.5


def _tensors(model: Path) -> dict[str, tuple[Path, str]]:
    where = {}
    for shard in sorted(model.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open handles are not iterable
                where[name] = (shard, name)
    return where


def _load(entry: tuple[Path, str]) -> torch.Tensor:
    with safe_open(str(entry[0]), framework="pt") as handle:
        return handle.get_tensor(entry[1]).double()


def rel_err_full(base: Path, ours: Path, other: Path, modules: list[str]) -> float:
    """Relative error of the other full model's W − W0 against ours, over the `modules` weights."""
    w0, mine, theirs = _tensors(base), _tensors(ours), _tensors(other)
    num = den = 0.0
    for module in modules:
        key = f"{module}.weight"
        base_w = _load(w0[key])
        delta = _load(mine[key]) - base_w
        num += float((_load(theirs[key]) - base_w - delta).square().sum())
        den += float(delta.square().sum())
    return (num / den) ** 0.5

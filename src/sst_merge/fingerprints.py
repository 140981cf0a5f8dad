"""Content fingerprints: sha256 of files, of model and adapter directories, of tensors."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import torch


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_fingerprint(path: Path, full_below: int = 64 << 20) -> str:
    """`file_sha256` of a file; for files over `full_below` bytes, sha256 of its size, first and last MiB
    (a base model of many GB is not re-read for every merge)."""
    size = path.stat().st_size
    if size <= full_below:
        return file_sha256(path)
    digest = hashlib.sha256()
    digest.update(str(size).encode())
    with path.open("rb") as handle:
        digest.update(handle.read(1 << 20))
        handle.seek(size - (1 << 20))
        digest.update(handle.read())
    return digest.hexdigest()


def dir_fingerprint(path: Path) -> str:
    """Fingerprint of a model or adapter directory: every file's name and `file_fingerprint`."""
    files = sorted(p for p in Path(path).rglob("*") if p.is_file())
    blob = json.dumps([[str(p.relative_to(path)), file_fingerprint(p)] for p in files])
    return hashlib.sha256(blob.encode()).hexdigest()


def tensors_fingerprint(tensors: dict[str, Sequence[torch.Tensor]]) -> str:
    """sha256 of named tensors' names, shapes and float32 bytes (e.g. the low-rank point a Fisher is taken at)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        for tensor in tensors[name]:
            t = tensor.detach().float().contiguous().cpu()
            digest.update(f"{name}:{list(t.shape)}".encode())
            digest.update(t.numpy().tobytes())
    return digest.hexdigest()

"""The real organism as the repository ships it, and `organism prepare`: materialise the full layout
from the shipped artifacts and the installed wheel, training nothing.

Shipped (``organisms/smollm2-135m/`` in the repository): `alignment/`, `experts/<task>/`, `safety/`
(PEFT LoRAs, float16), `data/<name>/{train,val,test}.jsonl` (gzip-packed as `.jsonl.gz` by
`export_shipped`: the shipped set has a size budget and JSON lines pack ~5×; an organism shipped before
that holds plain `.jsonl`), and `organism.json` (recipe, seeds, task order, metrics, stage times, and the
SHA-256 of every shipped file under ``files``).
Prepared: the same with the data unpacked, plus `original/` (the wheel's GGUF dequantized) and `base/`
(original with the alignment LoRA merged in), which are large and deterministic, so they are rebuilt
rather than shipped.
"""

from __future__ import annotations

import gzip
import shutil
import time
from pathlib import Path
from typing import Any

from sst_merge.atomic import atomic_output_dir, write_json_atomic
from sst_merge.errors import InputError
from sst_merge.jsonl import read_json_object
from sst_merge.progress import console
from sst_merge.provenance import file_sha256

MANIFEST = "organism.json"
SHIPPED_DIRS = ("alignment", "experts", "safety", "data")
REPO_ROOT = Path(__file__).resolve().parents[3]
PACKED = ".gz"


def shipped_dir(preset: str) -> Path:
    """Where the repository keeps the shipped artifacts of `preset`."""
    return REPO_ROOT / "organisms" / preset


def shipped_files(root: Path) -> dict[str, str]:
    """{relative path: SHA-256} of every file under the shipped directories of `root`."""
    files = {}
    for sub in SHIPPED_DIRS:
        for path in sorted((root / sub).rglob("*")):
            if path.is_file():
                files[path.relative_to(root).as_posix()] = file_sha256(path)
    return files


def read_manifest(root: Path) -> dict[str, Any]:
    """The organism.json of `root`; missing or corrupt is an InputError naming it."""
    path = root / MANIFEST
    if not path.is_file():
        raise InputError(f"no {MANIFEST}: not an organism directory", root)
    manifest = read_json_object(path, "manifest")
    if not isinstance(manifest.get("files"), dict):
        raise InputError("corrupt manifest (no 'files' table)", path)
    return manifest


def verify_shipped(root: Path, manifest: dict[str, Any]) -> None:
    """Every file the manifest lists is there with its recorded SHA-256 (a truncated or altered artifact
    is an InputError naming it)."""
    for relative, digest in manifest["files"].items():
        path = root / relative
        if ".." in Path(relative).parts or Path(relative).is_absolute():
            raise InputError("manifest names a file outside the organism", root / MANIFEST)
        if not path.is_file():
            raise InputError("shipped artifact missing", path)
        if file_sha256(path) != digest:
            raise InputError("shipped artifact is corrupt (SHA-256 differs from organism.json)", path)


def pack_data(root: Path) -> None:
    """Replace every `data/**/*.jsonl` under `root` by its gzip (`.jsonl.gz`) with the same bytes for the
    same rows: no file name and no time in the gzip header."""
    for path in sorted((root / "data").rglob("*.jsonl")):
        with path.open("rb") as rows, path.with_name(path.name + PACKED).open("wb") as raw, \
                gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as packed:
            shutil.copyfileobj(rows, packed)
        path.unlink()


def unpack_data(root: Path) -> None:
    """Replace every `data/**/*.jsonl.gz` under `root` by the `.jsonl` it packs (checked by SHA-256 first)."""
    for path in sorted((root / "data").rglob("*.jsonl" + PACKED)):
        path.with_name(path.name.removesuffix(PACKED)).write_bytes(gzip.decompress(path.read_bytes()))
        path.unlink()


def data_file(root: Path, name: str, split: str) -> Path:
    """The file of rows `data/<name>/<split>` in organism `root`: `.jsonl`, or `.jsonl.gz` as shipped."""
    plain = root / "data" / name / f"{split}.jsonl"
    packed = plain.with_name(plain.name + PACKED)
    return packed if packed.is_file() and not plain.is_file() else plain


def export_shipped(layout: Path, dest: Path) -> None:
    """Copy the shipped part of a built organism `layout` (its SHIPPED_DIRS, data packed, and organism.json
    listing the files as shipped) to `dest`, replacing what is there atomically."""
    manifest = read_manifest(layout)
    verify_shipped(layout, manifest)
    with atomic_output_dir(dest, force=True) as tmp:
        for sub in SHIPPED_DIRS:
            shutil.copytree(layout / sub, tmp / sub)
        pack_data(tmp)
        write_json_atomic(tmp / MANIFEST, {**manifest, "files": shipped_files(tmp)})


def prepare(preset: str, out: Path, force: bool = False, source: Path | None = None) -> Path:
    """Materialise the organism `preset` at `out` from its shipped artifacts (`source`, default the
    repository's) and the installed wheel, atomically; returns `out`."""
    from sst_merge.organism.smollm2 import merge_lora_into, wheel_gguf, write_original

    source = source or shipped_dir(preset)
    manifest = read_manifest(source)
    verify_shipped(source, manifest)
    gguf = wheel_gguf()
    start = time.perf_counter()
    with atomic_output_dir(out, force=force) as tmp:
        for sub in SHIPPED_DIRS:
            shutil.copytree(source / sub, tmp / sub)
        unpack_data(tmp)
        console.log("organism: dequantizing the GGUF into original/")
        write_original(gguf, tmp / "original")
        console.log("organism: merging the alignment LoRA into base/")
        merge_lora_into(tmp / "original", tmp / "alignment", tmp / "base")
        prepared = {**manifest, "files": shipped_files(tmp),  # the layout's own files, data unpacked
                    "prepared": {"from": str(source), "seconds": round(time.perf_counter() - start, 1)}}
        write_json_atomic(tmp / MANIFEST, prepared)
    return out

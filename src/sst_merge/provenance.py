"""The record written next to every output: resolved config, versions, seed, input hashes."""

from __future__ import annotations

import platform
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from sst_merge.fingerprints import file_sha256

PACKAGES = ("sst-merge", "torch", "transformers", "peft", "safetensors")


def versions() -> dict[str, str]:
    """Installed versions of the packages that determine a result, and Python's."""
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def dir_hashes(path: Path) -> dict[str, str]:
    """SHA-256 of every weight and config file directly inside an adapter directory."""
    return {
        f.name: file_sha256(f)
        for f in sorted(Path(path).iterdir())
        if f.is_file() and f.suffix in (".json", ".safetensors", ".bin")
    }


def provenance_record(config: Any, report: Any, job: Any) -> dict[str, Any]:
    """JSON-able record of a merge: what was asked, what was resolved, on what inputs, with what code."""
    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": config.model_dump(mode="json"),
        "method": report.method,
        "params": report.params,
        # What the method used where `params` left it open (a calibrated β) and what it found.
        "resolved": report.resolved,
        "weights": report.weights,
        "rank": report.rank,
        "adapters": [{"path": str(a.path), "files": dir_hashes(a.path)} for a in job.adapters],
        "base": str(job.base),
        "modules": len(report.modules),
        "max_rel_error": report.max_rel_error,
        "rel_error": report.rel_error,
        "seconds": report.seconds,
        "versions": versions(),
    }

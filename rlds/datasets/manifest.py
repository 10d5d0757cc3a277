"""The export manifest: what was exported, how it was split, and a checksum per file.

The cloud side (and the uploader) verify files against it, and a second export
of the same episodes with the same seed compares equal, which is what makes
exports idempotent and lets an interrupted one be resumed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from common.digest import sha256_file

MANIFEST_NAME = "manifest.json"


def build_manifest(
    out_dir: Path,
    *,
    dataset_id: str,
    export_format: str,
    splits: dict[str, str],
    seed: int,
    fractions: tuple[float, float, float],
    software_version: str,
    source_episodes: dict[str, str],
) -> dict[str, Any]:
    """Checksums of every file under ``out_dir`` (except the manifest itself)."""
    files = {}
    for p in sorted(out_dir.rglob("*")):
        if p.is_file() and p.name != MANIFEST_NAME:
            rel = p.relative_to(out_dir).as_posix()
            files[rel] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    by_split: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for eid, split in sorted(splits.items()):
        by_split.setdefault(split, []).append(eid)
    return {
        "dataset_id": dataset_id,
        "format": export_format,
        "software_version": software_version,
        "seed": seed,
        "fractions": list(fractions),
        "splits": by_split,
        "episodes": source_episodes,
        "files": files,
    }


def verify_manifest(out_dir: Path) -> list[str]:
    """Problems found checking every file against the manifest (empty list: all good)."""
    path = out_dir / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        return [f"{path}: no manifest"]
    except json.JSONDecodeError as exc:
        return [f"{path}: not valid JSON ({exc})"]
    problems = []
    for rel, entry in manifest.get("files", {}).items():
        p = out_dir / rel
        if not p.is_file():
            problems.append(f"{rel}: missing")
        elif sha256_file(p) != entry.get("sha256"):
            problems.append(f"{rel}: checksum differs from the manifest")
    return problems

"""One export run: choose episodes, split, anonymise, write a format, checksum, commit.

The dataset is written into a temporary sibling directory and renamed into
place only when complete, so an interrupted export leaves either the old
dataset or none — never half of one — and running it again resumes from a
clean start.  Running it again with the same episodes, seed and fractions
finds the manifest up to date and does nothing (idempotent).
"""

from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.durable import replacing_dir, write_json
from rlds.datasets.anonymize import Anonymizer
from rlds.datasets.manifest import MANIFEST_NAME, build_manifest
from rlds.datasets.splits import assign_splits
from rlds.reader import Episode
from rlds.storage import mark_exported
from rlds.validate import validate_episode

FORMATS = ("rlds", "lerobot")


class ExportError(RuntimeError):
    pass


@dataclass
class ExportResult:
    out_dir: Path
    format: str
    episodes: int
    skipped: list[str]
    splits: dict[str, int]
    up_to_date: bool
    files: int


# Formats whose writer needs an optional extra; checked before any work starts.
_NEEDS = {"lerobot": (("pyarrow", "av"), "export")}


def _require_libraries(fmt: str) -> None:
    """ExportError naming the modules and the extra to install, instead of a traceback.

    A robot installed with only the ``pi`` extra has neither pyarrow nor av; any
    import failure counts (a broken native wheel is as unusable as a missing one).
    """
    if fmt not in _NEEDS:
        return
    modules, extra = _NEEDS[fmt]
    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:
            missing.append(f"{name} ({type(exc).__name__}: {exc})")
    if missing:
        raise ExportError(
            f"the {fmt} format needs {' and '.join(modules)}, which cannot be imported here: "
            f"{'; '.join(missing)}. Install the {extra!r} extra: "
            f"pip install 'continuon-brain[{extra}]'"
        )


def _writer(fmt: str) -> Callable[..., list[Path]]:
    _require_libraries(fmt)
    if fmt == "rlds":
        from rlds.datasets.tfds import export_tfds

        return export_tfds
    if fmt == "lerobot":
        from rlds.datasets.lerobot import export_lerobot

        return export_lerobot
    raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")


def _fingerprint(episodes: Sequence[Episode]) -> dict[str, str]:
    """Episode id -> the committed steps' checksum (changes if an episode changes)."""
    return {e.episode_id: str(e.metadata.get("steps_sha256", "")) for e in episodes}


def export_dataset(
    episodes: Sequence[Episode],
    out_dir: Path,
    *,
    fmt: str,
    salt: bytes,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    software_version: str = "0",
    validate: bool = True,
    mark: bool = True,
) -> ExportResult:
    write = _writer(fmt)
    anon = Anonymizer(salt)
    skipped: list[str] = []
    good: list[Episode] = []
    for ep in episodes:
        if validate:
            report = validate_episode(ep.path)
            if not report.ok:
                skipped.append(f"{ep.episode_id}: {'; '.join(report.problems[:3])}")
                continue
        good.append(ep)
    if not good:
        raise ExportError(
            "no valid episodes to export" + (f" (skipped: {skipped})" if skipped else "")
        )

    raw_splits = assign_splits([e.episode_id for e in good], fractions, seed)
    fingerprint = {anon.id(k): v for k, v in _fingerprint(good).items()}
    key = hashlib.sha256(
        json.dumps(
            {"fmt": fmt, "seed": seed, "fr": list(fractions), "episodes": fingerprint},
            sort_keys=True,
        ).encode()
    ).hexdigest()
    dataset_id = f"continuon-{key[:16]}"

    manifest_path = out_dir / MANIFEST_NAME
    if manifest_path.exists():
        try:
            old = json.loads(manifest_path.read_text())
        except json.JSONDecodeError:
            old = {}
        if old.get("dataset_id") == dataset_id:
            if mark:
                for ep in good:
                    mark_exported(ep.path, fmt, out_dir)
            return ExportResult(
                out_dir,
                fmt,
                len(good),
                skipped,
                _count(raw_splits),
                True,
                len(old.get("files", {})),
            )

    # Built beside out_dir and swapped in whole: a reader (or a crash) sees the old dataset
    # or the new one.  Its files need no rename of their own.
    with replacing_dir(out_dir) as tmp:
        write(good, tmp, splits=raw_splits, transform_metadata=_transform(anon))
        manifest = build_manifest(
            tmp,
            dataset_id=dataset_id,
            export_format=fmt,
            splits={anon.id(k): v for k, v in raw_splits.items()},
            seed=seed,
            fractions=fractions,
            software_version=software_version,
            source_episodes=fingerprint,
        )
        write_json(tmp / MANIFEST_NAME, manifest)
    if mark:
        for ep in good:
            mark_exported(ep.path, fmt, out_dir)
    return ExportResult(
        out_dir, fmt, len(good), skipped, _count(raw_splits), False, len(manifest["files"])
    )


def _transform(anon: Anonymizer) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def transform(meta: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = anon.metadata(meta)
        return out

    return transform


def _count(splits: dict[str, str]) -> dict[str, int]:
    out = {"train": 0, "val": 0, "test": 0}
    for v in splits.values():
        out[v] = out.get(v, 0) + 1
    return out

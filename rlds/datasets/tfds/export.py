"""One TFDS export run: check the arguments, infer the schema, write the splits, rename.

See the package docstring for the layout and the atomicity of a run.
"""

from __future__ import annotations

import re
import shutil
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.durable import fsync_dir
from rlds.datasets.tfds.encode import encode_episode
from rlds.datasets.tfds.features import features_json
from rlds.datasets.tfds.files import ShardWriter, place, write_json
from rlds.datasets.tfds.schema import EpisodeLike, Schema, infer_schema

__all__ = ["DEFAULT_SHARD_MAX_BYTES", "TfdsExportStats", "export_tfds"]

DEFAULT_SHARD_MAX_BYTES = 64 * 1024 * 1024
FILE_FORMAT = "tfrecord"
FILEPATH_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"
SPLIT_ORDER = ("train", "val", "test")

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")
_SPLIT_RE = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass
class TfdsExportStats:
    """What the last ``export_tfds`` call wrote (filled in when ``stats`` is passed)."""

    episodes: int = 0
    steps: int = 0
    bytes: int = 0
    splits: dict[str, int] = field(default_factory=dict)


def export_tfds(
    episodes: Sequence[EpisodeLike],
    out_dir: Path,
    *,
    splits: dict[str, str],
    dataset_name: str = "continuon_episodes",
    version: str = "1.0.0",
    transform_metadata: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    shard_max_bytes: int = DEFAULT_SHARD_MAX_BYTES,
    include_extra: bool = False,
    description: str = "Continuon Brain robot episodes in RLDS layout.",
    stats: TfdsExportStats | None = None,
) -> list[Path]:
    """Write ``episodes`` as a TFDS (RLDS) dataset in ``out_dir``; return the files written.

    ``splits`` maps each episode's (original) ``episode_id`` to its split name.
    ``transform_metadata`` (e.g. the anonymizer) gets a copy of each episode's
    metadata and returns what is written.  Raises ``EpisodeError`` for corrupt or
    inconsistent episodes (the message names the episode and step) and
    ``ValueError`` for bad arguments; ``out_dir`` is untouched in either case.
    See the module docstring for the layout.
    """
    out_dir = Path(out_dir)
    _check_arguments(episodes, splits, dataset_name, version, shard_max_bytes)
    # Pass 1: metadata and the first step of every episode -> the schema.
    schema, metas = infer_schema(episodes, transform_metadata, include_extra)

    # Pass 2: write the shards into a temporary sibling, then rename into place.
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.parent.glob(f".{out_dir.name}.tfds-tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)  # left by an interrupted run
    tmp = out_dir.parent / f".{out_dir.name}.tfds-tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    names: list[str] = []
    split_infos: list[dict[str, Any]] = []
    st = TfdsExportStats()
    try:
        split_names = sorted(
            set(splits[ep.episode_id] for ep in episodes),
            key=lambda s: (SPLIT_ORDER.index(s) if s in SPLIT_ORDER else len(SPLIT_ORDER), s),
        )
        for split in split_names:
            chosen = [
                (ep, meta)
                for ep, meta in zip(episodes, metas, strict=True)
                if splits[ep.episode_id] == split
            ]
            writer, shard_names = _write_split(
                tmp, chosen, schema, dataset_name, split, shard_max_bytes, st
            )
            names.extend(shard_names)
            split_infos.append(
                {
                    "name": split,
                    "filepathTemplate": FILEPATH_TEMPLATE,
                    "numBytes": str(writer.num_bytes),
                    "shardLengths": [str(x) for x in writer.lengths],
                }
            )
            st.splits[split] = len(chosen)
            st.episodes += len(chosen)
            st.bytes += writer.num_bytes
        write_json(tmp / "features.json", features_json(schema), indent=4)
        write_json(
            tmp / "dataset_info.json",
            {
                "name": dataset_name,
                "version": version,
                "description": description,
                "fileFormat": FILE_FORMAT,
                "splits": split_infos,
            },
            indent=2,
        )
        names += ["features.json", "dataset_info.json"]
        fsync_dir(tmp)
        place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if stats is not None:
        stats.__dict__.update(st.__dict__)
    return [out_dir / n for n in names]


def _check_arguments(
    episodes: Sequence[EpisodeLike],
    splits: dict[str, str],
    dataset_name: str,
    version: str,
    shard_max_bytes: int,
) -> None:
    """ValueError naming the first bad argument, before anything is read or written."""
    if not _NAME_RE.match(dataset_name):
        raise ValueError(f"dataset_name {dataset_name!r} must be snake_case (tfds naming)")
    if not _VERSION_RE.match(version):
        raise ValueError(f"version {version!r} must be MAJOR.MINOR.PATCH")
    if shard_max_bytes < 1:
        raise ValueError("shard_max_bytes must be positive")
    if not episodes:
        raise ValueError("no episodes to export")
    ids = [ep.episode_id for ep in episodes]
    if len(set(ids)) != len(ids):
        raise ValueError("episode ids must be unique")
    missing = [i for i in ids if i not in splits]
    if missing:
        raise ValueError(f"{len(missing)} episode(s) have no split, e.g. {missing[0]}")
    for s in {splits[i] for i in ids}:
        if not _SPLIT_RE.match(s):
            raise ValueError(f"split name {s!r} is not a valid TFDS split name")


def _write_split(
    tmp: Path,
    chosen: list[tuple[EpisodeLike, dict[str, Any]]],
    schema: Schema,
    dataset_name: str,
    split: str,
    shard_max_bytes: int,
    st: TfdsExportStats,
) -> tuple[ShardWriter, list[str]]:
    """Encode one split's episodes into its shards, finished under their final names."""
    writer = ShardWriter(tmp, f"{dataset_name}-{split}.{FILE_FORMAT}", max_bytes=shard_max_bytes)
    try:
        for ep, meta in chosen:
            where = f"episode {ep.episode_id} ({getattr(ep, 'path', '?')})"
            chunks, nbytes, nsteps = encode_episode(ep, meta, schema, where)
            writer.write(chunks, nbytes)
            st.steps += nsteps
        shard_names = writer.finish()
    except BaseException:
        writer.close()  # release the open shard; the temp dir is removed by the caller
        raise
    return writer, shard_names

"""Training data: episodes -> the decoded-frame cache -> episodes ready to window.

1. **Sources** (``data.sources``): native episode roots (``rlds.reader``) and TFDS
   (RLDS) exports (``cloud_jobs.train.tfds_read``, no TensorFlow).  Episodes are
   listed in a fixed order, so every process of a distributed run sees the same list.
2. **Split**: a source's ``role``, then the ``holdout`` rules (``sim.track`` layouts,
   episode ids, a seeded fraction) decide train or val per episode.
3. **Cache**: each episode is decoded ONCE -- JPEG -> RGB -> ``preprocess_frame``
   (the daemon runner's INTER_AREA resize) -- into the decoded-frame cache the robot's
   fine-tune uses too (``rlds.framecache``: memory-mapped frames, the step's ``action``,
   ``extra["expert_action"]`` and ``extra["executed_action"]``), keyed by the episode's
   content checksum (``steps_sha256`` of a native episode, the sha256 of a TFDS record)
   and the image size; runs that share ``data.cache_dir`` share the work.
4. **Labels**: ``data.label`` (smoothed by ``data.label_smoothing``) and the executed
   actions that teacher forcing feeds back.  Windows and batches: ``windows.py``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cloud_jobs.train.config import DataConfig, DataSource
from cloud_jobs.train.tfds_read import TfdsEpisode, is_tfds_dir, list_tfds_episodes
from rlds import framecache
from rlds.reader import Episode, list_episodes

_log = logging.getLogger(__name__)


class DataError(RuntimeError):
    """The training data could not be found or read; ``str()`` says what and where."""


# --------------------------------------------------------------------------- listing


@dataclass
class EpisodeRef:
    """One episode to train on, wherever it is stored."""

    episode_id: str
    track: str | None
    num_steps: int
    checksum: str
    role: str  # "train" | "val" (after the split)
    source: str
    native: Episode | None = None
    tfds: TfdsEpisode | None = None

    def read(self) -> tuple[Sequence[bytes], np.ndarray, Sequence[Any] | None]:
        """(JPEG bytes per step, float64 actions [N, A], per-step ``extra`` or None)."""
        if self.tfds is not None:
            return self.tfds.steps_arrays()
        assert self.native is not None
        return framecache.native_reader(self.native)()


def _track_of(meta: dict[str, Any]) -> str | None:
    sim = meta.get("sim")
    if isinstance(sim, dict) and isinstance(sim.get("track"), str):
        return sim["track"]
    return None


def _list_source(src: DataSource) -> list[EpisodeRef]:
    path = Path(src.path).expanduser()
    if not path.is_dir():
        raise DataError(f"data source {src.path}: no such directory")
    fmt = src.format
    if fmt == "auto":
        fmt = "tfds" if is_tfds_dir(path) else "episodes"
    refs: list[EpisodeRef] = []
    if fmt == "tfds":
        for ep in list_tfds_episodes(path, src.splits):
            refs.append(
                EpisodeRef(
                    episode_id=ep.episode_id,
                    track=_track_of(ep.metadata),
                    num_steps=ep.num_steps,
                    checksum=f"tfds:{ep.checksum}",
                    role=src.role,
                    source=str(path),
                    tfds=ep,
                )
            )
    else:
        if src.splits is not None:
            raise DataError(f"data source {src.path}: 'splits' applies to TFDS exports only")
        for rec in list_episodes(path):
            refs.append(
                EpisodeRef(
                    episode_id=rec.episode_id,
                    track=_track_of(rec.metadata),
                    num_steps=rec.num_steps,
                    checksum=framecache.native_checksum(rec),
                    role=src.role,
                    source=str(path),
                    native=rec,
                )
            )
    if not refs:
        raise DataError(f"data source {src.path}: no committed episodes found ({fmt})")
    return refs


def _holdout_rank(seed: int, episode_id: str) -> str:
    return hashlib.sha256(f"{seed}|{episode_id}".encode()).hexdigest()


def list_data(cfg: DataConfig, seed: int) -> list[EpisodeRef]:
    """Every episode of every source with its role (train/val) decided."""
    refs: list[EpisodeRef] = []
    seen: set[str] = set()
    for src in cfg.sources:
        for ref in _list_source(src):
            if ref.checksum in seen:
                _log.warning("episode %s appears twice; using it once", ref.episode_id)
                continue
            seen.add(ref.checksum)
            refs.append(ref)
    if cfg.max_episodes is not None:
        refs = refs[: cfg.max_episodes]
    hold_tracks, hold_ids = set(cfg.holdout.tracks), set(cfg.holdout.episodes)
    undecided = []
    for ref in refs:
        if ref.role != "auto":
            continue
        if ref.track in hold_tracks or ref.episode_id in hold_ids:
            ref.role = "val"
        else:
            undecided.append(ref)
    unknown = hold_ids - {r.episode_id for r in refs}
    if unknown:
        raise DataError(f"holdout.episodes names unknown episode(s): {sorted(unknown)}")
    n_val = round(cfg.holdout.fraction * len(undecided))
    ranked = sorted(undecided, key=lambda r: _holdout_rank(seed, r.episode_id))
    for i, ref in enumerate(ranked):
        ref.role = "val" if i < n_val else "train"
    return refs


# --------------------------------------------------------------------------- cache


def build_cache_entry(
    ref: EpisodeRef,
    cache_dir: Path,
    image_hw: tuple[int, int],
    preprocess: Callable[[np.ndarray], np.ndarray],
    threads: int = 2,
) -> Path:
    """Decode ``ref`` into the shared frame cache unless it is there already; returns the
    entry's directory (``rlds.framecache``)."""
    try:
        entry = framecache.load_or_build(
            cache_dir,
            checksum=ref.checksum,
            episode_id=ref.episode_id,
            image_hw=image_hw,
            resize=preprocess,
            read=ref.read,
            threads=threads,
            meta={"track": ref.track, "source": ref.source},
        )
    except framecache.FrameCacheError as e:
        raise DataError(f"{ref.source}: {e}") from None
    return entry.path


def smooth_labels(labels: np.ndarray, k: int) -> np.ndarray:
    """Centred moving average over ``k`` steps (edges use the shorter window there)."""
    if k <= 1 or len(labels) == 0:
        return labels
    half = k // 2
    finite = np.isfinite(labels)
    vals = np.where(finite, labels, 0.0).astype(np.float64)
    csum = np.concatenate([np.zeros((1, *vals.shape[1:])), np.cumsum(vals, axis=0)])
    ccnt = np.concatenate([np.zeros((1, *vals.shape[1:])), np.cumsum(finite, axis=0)])
    n = len(labels)
    lo = np.clip(np.arange(n) - half, 0, n)
    hi = np.clip(np.arange(n) + half + 1, 0, n)
    s = csum[hi] - csum[lo]
    c = ccnt[hi] - ccnt[lo]
    out = np.where(finite & (c > 0), s / np.maximum(c, 1), np.nan)
    return out.astype(np.float32)


@dataclass
class CachedEpisode:
    episode_id: str
    track: str | None
    frames: np.ndarray  # uint8 [N, H, W, 3], memory-mapped
    labels: np.ndarray  # float32 [N, A] (the configured label, smoothed)
    executed: np.ndarray  # float32 [N, A] (executed action, else the step's action; 0 if none)

    def __len__(self) -> int:
        return len(self.frames)


def load_cache_entry(path: Path, label: str, smoothing: int) -> CachedEpisode:
    entry = framecache.load_entry(path)
    if entry is None:
        raise DataError(f"{path}: the cache entry is missing or damaged (it is rebuilt next run)")
    # A step with no usable executed action feeds back neutral, never NaN, into the state.
    executed = np.nan_to_num(entry.source("executed_action"), nan=0.0)
    return CachedEpisode(
        entry.episode_id,
        entry.meta.get("track"),
        entry.frames,
        smooth_labels(entry.source(label), smoothing),
        executed,
    )

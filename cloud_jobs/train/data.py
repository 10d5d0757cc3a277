"""Training data: episodes -> a decoded-frame cache -> windows of T consecutive steps.

1. **Sources** (``data.sources``): native episode roots (``rlds.reader``) and TFDS
   (RLDS) exports (``cloud_jobs.train.tfds_read``, no TensorFlow).  Episodes are
   listed in a fixed order, so every process of a distributed run sees the same list.
2. **Split**: a source's ``role``, then the ``holdout`` rules (``sim.track`` layouts,
   episode ids, a seeded fraction) decide train or val per episode.
3. **Cache**: each episode is decoded ONCE -- JPEG -> RGB -> ``preprocess_frame``
   (the daemon runner's INTER_AREA resize) -- into ``<cache>/<key>/frames.npy``
   (uint8 [N, H, W, 3]) and ``labels.npy`` (float32 [N, 3, A]: ``action``,
   ``extra["expert_action"]`` and ``extra["executed_action"]``, NaN where absent).
   ``key`` hashes the episode's content checksum (``steps_sha256`` of a native
   episode, the sha256 of a TFDS record) with the image size and the cache
   version, so an edited episode is decoded again and an unchanged one never is;
   runs that share ``data.cache_dir`` share the work.
   Entries are written to a temporary directory and renamed into place.
4. **Windows**: ``(episode, start)`` pairs, ``start = 0, stride, 2*stride, ...,
   N - T`` -- a window never crosses an episode boundary.  Frames are read from
   the memory-mapped cache, so the dataset does not have to fit in RAM.
5. **Batches**: shuffled windows (``WindowBatchSampler``), or for stateful TBPTT
   (``recurrence.stateful``) slots that each walk an episode window after window
   (``StatefulBatchSampler``), the loop carrying each slot's state across batches.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np

from cloud_jobs.train.config import AugmentConfig, DataConfig, DataSource
from cloud_jobs.train.tfds_read import TfdsEpisode, is_tfds_dir, list_tfds_episodes
from rlds import images as rlds_images
from rlds.reader import Episode, list_episodes

_log = logging.getLogger(__name__)

CACHE_VERSION = 2
#: The per-step action sources cached in ``labels.npy``: the first two can be the label
#: (``data.label``), the last is what teacher forcing feeds back.
LABEL_SOURCES = ("action", "expert_action", "executed_action")


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

    def cache_key(self, image_hw: tuple[int, int]) -> str:
        text = f"v{CACHE_VERSION}|{image_hw[0]}x{image_hw[1]}|{self.checksum}"
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def read(self) -> tuple[list[bytes], np.ndarray, list[dict[str, Any]] | None]:
        """(JPEG bytes per step, float64 actions [N, A], per-step ``extra`` or None)."""
        if self.tfds is not None:
            return self.tfds.steps_arrays()
        assert self.native is not None
        frames: list[bytes] = []
        actions: list[np.ndarray] = []
        extras: list[dict[str, Any]] = []
        for step in self.native.steps(decode_images=False):
            data = step.encoded.get("image")
            if data is None:
                raise DataError(f"{self.native.path}: step {step.index} has no image")
            frames.append(data)
            actions.append(np.asarray(step.action, dtype=np.float64).reshape(-1))
            extras.append(step.extra)
        act = np.stack(actions) if actions else np.zeros((0, 0))
        return frames, act, extras


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
            sha = str(rec.metadata.get("steps_sha256", ""))
            refs.append(
                EpisodeRef(
                    episode_id=rec.episode_id,
                    track=_track_of(rec.metadata),
                    num_steps=rec.num_steps,
                    checksum=f"rlds:{sha}:{rec.metadata.get('file_size')}",
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


def _labels(actions: np.ndarray, extras: list[dict[str, Any]] | None) -> np.ndarray:
    """float32 [N, 3, A]: the step's ``action``, then ``extra[...]`` of the other
    ``LABEL_SOURCES`` (NaN where absent or malformed)."""
    n, a = actions.shape
    out = np.full((n, len(LABEL_SOURCES), a), np.nan, dtype=np.float32)
    out[:, 0] = actions
    if extras is not None:
        for i, ex in enumerate(extras):
            for j, key in enumerate(LABEL_SOURCES[1:], start=1):
                v = ex.get(key) if isinstance(ex, dict) else None
                if isinstance(v, list) and len(v) == a:
                    with contextlib.suppress(TypeError, ValueError):
                        out[i, j] = np.asarray(v, dtype=np.float64)
    return out


def _decode(data: bytes, preprocess: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    rgb = rlds_images.decode_jpeg(data)
    if rgb is None:
        raise DataError("a JPEG frame does not decode")
    return preprocess(rgb)


def build_cache_entry(
    ref: EpisodeRef,
    cache_dir: Path,
    image_hw: tuple[int, int],
    preprocess: Callable[[np.ndarray], np.ndarray],
    threads: int = 2,
) -> Path:
    """Decode ``ref`` into ``cache_dir/<key>/`` unless it is there already; returns the dir."""
    key = ref.cache_key(image_hw)
    final = cache_dir / key
    if (final / "meta.json").is_file():
        return final
    tmp = cache_dir / f".{key}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        jpegs, actions, extras = ref.read()
        n = len(jpegs)
        if actions.ndim != 2 or actions.shape[0] != n:
            raise DataError(f"episode {ref.episode_id}: actions {actions.shape} for {n} steps")
        h, w = image_hw
        frames = np.lib.format.open_memmap(
            tmp / "frames.npy", mode="w+", dtype=np.uint8, shape=(n, h, w, 3)
        )
        with ThreadPoolExecutor(max_workers=threads) as pool:
            for i, img in enumerate(pool.map(lambda b: _decode(b, preprocess), jpegs)):
                if img.shape != (h, w, 3):
                    raise DataError(f"episode {ref.episode_id}: preprocessed frame is {img.shape}")
                frames[i] = img
        frames.flush()
        del frames
        np.save(tmp / "labels.npy", _labels(actions, extras))
        meta = {
            "cache_version": CACHE_VERSION,
            "episode_id": ref.episode_id,
            "track": ref.track,
            "num_steps": n,
            "checksum": ref.checksum,
            "source": ref.source,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "meta.json").is_file():  # not a concurrent writer winning
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


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
    executed: np.ndarray  # float32 [N, A] (executed action, else the step's action)

    def __len__(self) -> int:
        return len(self.frames)


def load_cache_entry(path: Path, label: str, smoothing: int) -> CachedEpisode:
    meta = json.loads((path / "meta.json").read_text())
    frames = np.load(path / "frames.npy", mmap_mode="r")
    sources = np.load(path / "labels.npy")
    if meta.get("cache_version") != CACHE_VERSION or sources.shape[1:2] != (len(LABEL_SOURCES),):
        raise DataError(f"{path}: cache entry of another version; delete it to rebuild")

    def source(name: str) -> np.ndarray:  # steps without it fall back to `action`
        got = sources[:, LABEL_SOURCES.index(name)]
        missing = ~np.isfinite(got).all(axis=1)
        return np.where(missing[:, None], sources[:, 0], got)

    return CachedEpisode(
        meta["episode_id"],
        meta.get("track"),
        frames,
        smooth_labels(source(label), smoothing),
        source("executed_action").astype(np.float32),
    )


# --------------------------------------------------------------------------- windows


def window_starts(n: int, window: int, stride: int) -> list[int]:
    if n < window:
        return []
    return list(range(0, n - window + 1, stride))


class WindowSet:
    """All windows of T steps over a list of cached episodes."""

    def __init__(self, episodes: Sequence[CachedEpisode], window: int, stride: int) -> None:
        self.episodes = list(episodes)
        self.window = window
        index = [
            (e, s)
            for e, ep in enumerate(self.episodes)
            for s in window_starts(len(ep), window, stride)
        ]
        self.index = np.asarray(index, dtype=np.int64).reshape(-1, 2)
        self.too_short = [ep.episode_id for ep in self.episodes if len(ep) < window]

    def __len__(self) -> int:
        return len(self.index)

    @property
    def num_steps(self) -> int:
        return sum(len(ep) for ep in self.episodes)

    def get(self, wid: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(frames uint8 [T, H, W, 3], labels [T, A], executed actions [T, A])."""
        e, s = self.index[wid]
        ep = self.episodes[e]
        return (
            np.asarray(ep.frames[s : s + self.window]),
            np.asarray(ep.labels[s : s + self.window]),
            np.asarray(ep.executed[s : s + self.window]),
        )

    def spread(self, count: int) -> list[int]:
        """Up to ``count`` window ids spread evenly over the set (deterministic)."""
        n = len(self)
        if n <= count:
            return list(range(n))
        return [int(i) for i in np.linspace(0, n - 1, count).round().astype(int)]


def _shift(a: np.ndarray, d: int, axis: int) -> np.ndarray:
    """``a`` moved by ``d`` along ``axis``; the uncovered border repeats the edge."""
    out = np.empty_like(a)
    n = a.shape[axis]
    d = max(-(n - 1), min(n - 1, d))

    def sl(start: int | None, stop: int | None) -> tuple[slice, ...]:
        idx = [slice(None)] * a.ndim
        idx[axis] = slice(start, stop)
        return tuple(idx)

    if d > 0:
        out[sl(d, None)] = a[sl(0, n - d)]
        out[sl(0, d)] = a[sl(0, 1)]
    else:
        out[sl(0, n + d)] = a[sl(-d, None)]
        out[sl(n + d, None)] = a[sl(n - 1, n)]
    return out


def augment_window(frames: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Brightness/contrast jitter and a small (vertical) shift, the same for every frame."""
    if not cfg.enabled:
        return frames
    gain = rng.uniform(1 - cfg.brightness, 1 + cfg.brightness)
    contrast = rng.uniform(1 - cfg.contrast, 1 + cfg.contrast)
    dy = int(rng.integers(-cfg.shift_px, cfg.shift_px + 1))
    dx = int(rng.integers(-cfg.shift_x_px, cfg.shift_x_px + 1))
    # The photometric part is one affine map of the 256 pixel values: a lookup table.
    mean = float(frames.mean())
    lut = np.rint(np.clip((np.arange(256) - mean) * contrast + mean * gain, 0, 255))
    t, h, w, c = frames.shape
    flat = np.ascontiguousarray(frames).reshape(t * h, w * c)
    out = cv2.LUT(flat, lut.astype(np.uint8)).reshape(t, h, w, c)
    if dy:  # translate, repeating the edge pixels
        out = _shift(out, dy, axis=1)
    if dx:
        out = _shift(out, dx, axis=2)
    return np.ascontiguousarray(out)


class WindowItem(NamedTuple):
    """One window of a batch, as the samplers deal it out."""

    #: Seeds the augmentation with ``wid`` (shuffled: the epoch) or alone (stateful: the
    #: slot's episode visit, so every window of a visit is augmented alike).
    key: int
    wid: int
    #: The window starts from the zero state (always, unless stateful and mid-visit).
    fresh: bool


class Batch(NamedTuple):
    frames: Any  # uint8 [B, T, H, W, 3]
    labels: Any  # float32 [B, T, A]
    executed: Any  # float32 [B, T, A]
    fresh: Any  # bool [B]


class WindowDataset:
    """Map-style dataset of :class:`WindowItem` -> (frames, labels, executed actions, fresh).

    The augmentation of a window depends only on the seed and the item, never on which
    worker or process assembles it, so a run is reproducible and resumable whatever
    ``data.workers`` is.
    """

    def __init__(
        self,
        windows: WindowSet,
        augment: AugmentConfig | None,
        seed: int,
        per_visit: bool = False,
    ) -> None:
        self.windows = windows
        self.augment = augment
        self.seed = seed
        self.per_visit = per_visit

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, item: WindowItem) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
        key, wid, fresh = item
        frames, labels, executed = self.windows.get(wid)
        if self.augment is not None and self.augment.enabled:
            parts = [self.seed, key, 0xA07] if self.per_visit else [self.seed, key, wid, 0xA06]
            frames = augment_window(frames, self.augment, np.random.default_rng(parts))
        return frames, labels, executed, fresh


class WindowBatchSampler:
    """Batches of shuffled windows for one rank, forever, from a given position.

    Each epoch is a permutation of all windows seeded by (seed, epoch), padded by
    wrapping to a multiple of ``batch_size * world`` (as ``DistributedSampler``
    does), and dealt to ranks round-robin: rank r gets positions r, r + world, ...
    Every batch is full.  ``(epoch, batch)`` is the whole sampler state, saved in
    checkpoints, so a resumed run sees exactly the batches it would have seen.
    """

    def __init__(
        self,
        num_windows: int,
        batch_size: int,
        *,
        seed: int,
        rank: int = 0,
        world: int = 1,
        start_epoch: int = 0,
        start_batch: int = 0,
    ) -> None:
        if num_windows < 1:
            raise DataError("no training windows")
        self.n = num_windows
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world = world
        self.start_epoch = start_epoch
        self.start_batch = start_batch

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(self.n / (self.batch_size * self.world))

    def epoch_order(self, epoch: int) -> np.ndarray:
        perm = np.random.default_rng([self.seed, epoch, 0x5A3]).permutation(self.n)
        total = self.batches_per_epoch * self.batch_size * self.world
        reps = math.ceil(total / self.n)
        padded = np.tile(perm, reps)[:total]
        return padded[self.rank :: self.world]

    def __iter__(self) -> Iterator[list[WindowItem]]:
        epoch, batch = self.start_epoch, self.start_batch
        while True:
            mine = self.epoch_order(epoch)
            while batch < self.batches_per_epoch:
                ids = mine[batch * self.batch_size : (batch + 1) * self.batch_size]
                yield [WindowItem(epoch, int(w), True) for w in ids]
                batch += 1
            epoch, batch = epoch + 1, 0


class StatefulBatchSampler:
    """Batches for stateful truncated BPTT: batch slot j walks episodes window after window.

    ``windows`` must tile its episodes (stride = window).  Each slot (``batch_size`` per
    rank, numbered over all ranks) has its own stream seeded by (seed, slot): a random
    episode, window after window to its end, then another.  Its first episode starts at a
    random window, so the slots do not all reach an episode's end on the same step.  A
    visit's first window is ``fresh`` (the loop starts that slot from the zero state);
    the others continue the state the slot carried out of the previous batch.  The
    position is a function of the step alone, so a resumed run replays it exactly.
    """

    def __init__(
        self,
        windows: WindowSet,
        batch_size: int,
        *,
        seed: int,
        rank: int = 0,
        world: int = 1,
        start_step: int = 0,
    ) -> None:
        if len(windows) < 1:
            raise DataError("no training windows")
        episode_of = windows.index[:, 0]
        self.eligible = np.unique(episode_of)
        self.first = {int(e): int(np.argmax(episode_of == e)) for e in self.eligible}
        self.count = {int(e): int((episode_of == e).sum()) for e in self.eligible}
        self.n = len(windows)
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world = world
        self.start_step = start_step

    @property
    def batches_per_epoch(self) -> int:
        """Nominal: batches in which the ranks see as many windows as the set holds."""
        return math.ceil(self.n / (self.batch_size * self.world))

    def slot_stream(self, slot: int) -> Iterator[WindowItem]:
        rng = np.random.default_rng([self.seed, slot, 0x57A7])
        slots = self.batch_size * self.world
        visit = 0
        while True:
            e = int(self.eligible[rng.integers(len(self.eligible))])
            begin = int(rng.integers(self.count[e])) if visit == 0 else 0
            for k in range(begin, self.count[e]):
                yield WindowItem(visit * slots + slot, self.first[e] + k, k == begin)
            visit += 1

    def __iter__(self) -> Iterator[list[WindowItem]]:
        b = self.batch_size
        streams = [self.slot_stream(self.rank * b + j) for j in range(b)]
        for _ in range(self.start_step):
            for s in streams:
                next(s)
        while True:
            yield [next(s) for s in streams]


def collate(items: list[tuple[np.ndarray, np.ndarray, np.ndarray, bool]]) -> Batch:
    import torch

    return Batch(
        torch.from_numpy(np.stack([it[0] for it in items])),
        torch.from_numpy(np.stack([it[1] for it in items]).astype(np.float32)),
        torch.from_numpy(np.stack([it[2] for it in items]).astype(np.float32)),
        torch.tensor([bool(it[3]) for it in items]),
    )

"""Windows of T consecutive steps over the cached episodes, and the batches of them.

A window never crosses an episode boundary; frames are read from the memory-mapped
cache, so the dataset does not have to fit in RAM.  Two ways to deal windows into
batches:

* :class:`WindowBatchSampler` (the default): shuffled windows, each starting from the
  zero state;
* :class:`StatefulBatchSampler` (``recurrence.stateful``, stateful truncated BPTT): each
  batch slot walks an episode window after window, and the loop carries the slot's
  state from one batch into the next.

The augmentation of a window depends only on the seed and the sampler's item, never on
which worker or process assembles it, so a run is reproducible and resumable whatever
``data.workers`` is.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import cv2
import numpy as np

from cloud_jobs.train.config import AugmentConfig
from cloud_jobs.train.data import CachedEpisode, DataError


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

"""Training data for the on-robot fine-tune: recorded episodes -> frames, labels, windows.

Torch-free: the manager (inside the daemon) uses :func:`usable_episodes` to check the start
condition "at least N episodes", the worker uses the rest.  Deliberately small and separate
from ``cloud_jobs.train.data`` (the robot must not depend on cloud code):

* episodes are the committed ones under the recording root that have camera images and a
  non-empty action, split train/held-out by a seeded hash of the episode id (stable as more
  episodes are recorded: an episode never moves from held-out into training);
* each episode is decoded once (JPEG -> RGB -> the runner's INTER_AREA resize) into the
  decoded-frame cache that ``cloud_jobs train`` uses too (``rlds.framecache``);
* :class:`ShuffleBuffer` streams windows of T consecutive ticks through a buffer of
  ``2 x batch`` (DESIGN.md) and draws batches from it; its whole state is JSON, saved in
  every checkpoint, so a resumed run draws exactly the batches it would have drawn.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from brain.imaging import resize_rgb
from common.durable import write_json
from rlds import framecache
from rlds.reader import Episode, list_episodes


class DataError(RuntimeError):
    """The episodes cannot be used for training; ``str()`` says which and why."""


def usable_episodes(root: Path, min_steps: int = 2) -> list[Episode]:
    """Committed episodes under ``root`` with camera images and at least ``min_steps`` steps."""
    root = Path(root)
    if not root.is_dir():
        return []
    out = []
    for ep in list_episodes(root):
        sensors = ep.metadata.get("sensors")  # the daemon recorder's sensor specs
        if isinstance(sensors, dict) and sensors and "image" not in sensors:
            continue
        if ep.num_steps >= min_steps:
            out.append(ep)
    return out


def split_episodes(
    episodes: Sequence[Episode], holdout_fraction: float, seed: int
) -> tuple[list[Episode], list[Episode]]:
    """(train, held-out): each episode's side depends only on (seed, its id)."""
    train: list[Episode] = []
    held: list[Episode] = []
    for ep in episodes:
        h = hashlib.sha256(f"{seed}|{ep.episode_id}".encode()).digest()
        u = int.from_bytes(h[:8], "big") / 2**64
        (held if u < holdout_fraction else train).append(ep)
    if holdout_fraction > 0 and not held and len(train) >= 2:
        held.append(train.pop())  # always something to judge the candidate on
    return train, held


@dataclass
class EpisodeArrays:
    episode_id: str
    frames: np.ndarray  # uint8 [N, H, W, 3] at the model's size
    labels: np.ndarray  # float32 [N, A]; NaN where a step has no usable label


def _resizer(hw: tuple[int, int]) -> framecache.Resize:
    def resize(rgb: np.ndarray) -> np.ndarray:
        return resize_rgb(rgb, hw)

    return resize


def _entry(ep: Episode, hw: tuple[int, int], cache_dir: Path) -> framecache.CachedFrames:
    try:
        return framecache.load_or_build(
            cache_dir,
            checksum=framecache.native_checksum(ep),
            episode_id=ep.episode_id,
            image_hw=hw,
            resize=_resizer(hw),
            read=framecache.native_reader(ep),
        )
    except framecache.FrameCacheError as e:
        raise DataError(str(e)) from None


def load_episode(ep: Episode, hw: tuple[int, int], label: str, cache_dir: Path) -> EpisodeArrays:
    """Decoded frames (memory-mapped from the shared decoded-frame cache, decoded once on
    first use, so a run's resident memory does not grow with the data) and the labels:
    ``label`` per step, the step's ``action`` where it has none."""
    entry = _entry(ep, hw, Path(cache_dir))
    if len(entry) == 0 or entry.actions.shape[2] == 0:
        raise DataError(f"episode {ep.episode_id}: no steps with actions")
    try:
        labels = entry.source(label)
    except framecache.FrameCacheError as e:
        raise DataError(str(e)) from None
    return EpisodeArrays(ep.episode_id, entry.frames, labels)


def cache_entry(ep: Episode, hw: tuple[int, int], cache_dir: Path) -> Path:
    """Where :func:`load_episode` keeps ``ep``'s frames (other per-episode files go beside)."""
    return Path(cache_dir) / framecache.cache_key(framecache.native_checksum(ep), hw)


def window_index(lengths: Sequence[int], window: int) -> list[tuple[int, int]]:
    """(episode, start) of every window of ``window`` ticks, stride window/2, never crossing
    an episode boundary; an episode shorter than the window gives one short window."""
    out: list[tuple[int, int]] = []
    stride = max(1, window // 2)
    for e, n in enumerate(lengths):
        if n <= window:
            out.append((e, 0))
            continue
        starts = list(range(0, n - window + 1, stride))
        if starts[-1] != n - window:
            starts.append(n - window)
        out.extend((e, s) for s in starts)
    return out


class ShuffleBuffer:
    """Windows stream in (a seeded permutation per pass) through a buffer; batches are drawn
    from it at random.  ``state()`` / ``from_state`` make it resumable exactly."""

    def __init__(self, num_windows: int, batch_size: int, buffer_size: int, seed: int) -> None:
        if num_windows < 1:
            raise DataError("no training windows")
        self.n = num_windows
        self.batch_size = batch_size
        self.buffer_size = max(buffer_size, batch_size)
        self.seed = seed
        self.epoch = 0
        self.pos = 0  # next position in this epoch's permutation
        self.buffer: list[int] = []
        self.draws = 0  # batches drawn so far (seeds the draw RNG)

    def _perm(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch, 0x10CA1]).permutation(self.n)

    def _fill(self) -> None:
        perm = self._perm()
        while len(self.buffer) < self.buffer_size:
            if self.pos >= self.n:
                self.epoch += 1
                self.pos = 0
                perm = self._perm()
            self.buffer.append(int(perm[self.pos]))
            self.pos += 1

    def next_batch(self) -> list[int]:
        self._fill()
        rng = np.random.default_rng([self.seed, self.draws, 0xBA7C4])
        picks = sorted(rng.choice(len(self.buffer), self.batch_size, replace=False), reverse=True)
        self.draws += 1
        return [self.buffer.pop(int(i)) for i in picks]

    def state(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "batch_size": self.batch_size,
            "buffer_size": self.buffer_size,
            "seed": self.seed,
            "epoch": self.epoch,
            "pos": self.pos,
            "buffer": list(self.buffer),
            "draws": self.draws,
        }

    @classmethod
    def from_state(cls, st: dict[str, Any]) -> ShuffleBuffer:
        sb = cls(int(st["n"]), int(st["batch_size"]), int(st["buffer_size"]), int(st["seed"]))
        sb.epoch, sb.pos, sb.draws = int(st["epoch"]), int(st["pos"]), int(st["draws"])
        sb.buffer = [int(v) for v in st["buffer"]]
        return sb


def episode_summary(episodes: Sequence[Episode]) -> list[dict[str, Any]]:
    """What a run trained on, for its result file and the upload bundle."""
    return [
        {
            "episode_id": ep.episode_id,
            "num_steps": ep.num_steps,
            "steps_sha256": ep.metadata.get("steps_sha256"),
        }
        for ep in episodes
    ]


def dump_json(path: Path, obj: Any) -> None:
    """The run's JSON files (gate, result, adapter manifest): ``common.durable.write_json``."""
    write_json(path, obj, indent=1)

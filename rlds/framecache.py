"""The decoded-frame cache: each episode's camera frames decoded once, memory-mapped after.

Training reads every frame of an episode many times at the model's size; decoding the
JPEGs each time would cost more than the training step.  Both trainers -- the robot's
fine-tune (``brain.localtrain``) and ``cloud_jobs train`` -- keep one entry per (episode
content, image size) under a cache directory::

    <cache>/<key>/frames.npy    uint8 [N, H, W, 3], opened memory-mapped
    <cache>/<key>/actions.npy   float32 [N, len(ACTION_SOURCES), A], NaN where absent
    <cache>/<key>/meta.json     written last: what the entry holds

``key`` hashes the episode's content checksum with the image size and :data:`FORMAT`, so
an edited episode is decoded again and an unchanged one never is.  An entry is assembled
in a private temporary directory, fsynced and renamed into place: a reader sees a whole
entry or none, and processes sharing the directory share the work (whoever loses the race
to rename drops its copy).  An entry that does not load (a power cut, a disk error) is
removed and rebuilt.  The decode is JPEG -> RGB -> the caller's ``resize`` (the daemon
runner's INTER_AREA resize, injected: this library knows nothing of the model).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.durable import fsync_dir, move
from rlds import images as rlds_images
from rlds.reader import Episode

FORMAT = 1
#: The per-step actions an entry keeps: the step's ``action``, then these ``extra`` keys.
#: ``expert_action`` is the label a demonstration recorder writes beside a noisy drive;
#: ``executed_action`` is what the car actually executed (teacher forcing feeds it back).
ACTION_SOURCES = ("action", "expert_action", "executed_action")

#: ``() -> (JPEG bytes per step, actions [N, A], per-step extra dicts or None)``.
EpisodeReader = Callable[[], tuple[Sequence[bytes], np.ndarray, Sequence[Any] | None]]
Resize = Callable[[np.ndarray], np.ndarray]


class FrameCacheError(ValueError):
    """An episode cannot be cached (a frame does not decode, ragged actions, ...)."""


@dataclass(frozen=True)
class CachedFrames:
    path: Path
    episode_id: str
    frames: np.ndarray  # uint8 [N, H, W, 3], memory-mapped
    actions: np.ndarray  # float32 [N, len(ACTION_SOURCES), A]
    meta: dict[str, Any]

    def __len__(self) -> int:
        return len(self.frames)

    def source(self, name: str) -> np.ndarray:
        """float32 [N, A] of one of :data:`ACTION_SOURCES`; a step without it (or with a
        non-finite value) falls back to its ``action``; what is still not finite is NaN
        (an "inf = hold" action carries no label)."""
        if name not in ACTION_SOURCES:
            raise FrameCacheError(f"unknown action source {name!r} (one of {ACTION_SOURCES})")
        got = self.actions[:, ACTION_SOURCES.index(name)]
        missing = ~np.isfinite(got).all(axis=1)
        out = np.where(missing[:, None], self.actions[:, 0], got).astype(np.float32)
        out[~np.isfinite(out)] = np.nan
        return out


def cache_key(checksum: str, image_hw: tuple[int, int]) -> str:
    text = f"v{FORMAT}|{image_hw[0]}x{image_hw[1]}|{checksum}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def native_checksum(ep: Episode) -> str:
    """The content identity of a committed native episode."""
    return f"rlds:{ep.metadata.get('steps_sha256', '')}:{ep.metadata.get('file_size')}"


def native_reader(ep: Episode) -> EpisodeReader:
    """Reads a native episode's encoded camera frames, actions and extras (not decoded)."""

    def read() -> tuple[list[bytes], np.ndarray, list[Any]]:
        frames: list[bytes] = []
        actions: list[np.ndarray] = []
        extras: list[Any] = []
        for step in ep.steps(decode_images=False):
            data = step.encoded.get("image")
            if data is None:
                raise FrameCacheError(f"episode {ep.episode_id}: step {step.index} has no image")
            a = np.asarray(step.action, dtype=np.float64).reshape(-1)
            if actions and a.size != actions[0].size:
                raise FrameCacheError(
                    f"episode {ep.episode_id}: step {step.index} has {a.size} actions, "
                    f"not {actions[0].size}"
                )
            frames.append(data)
            actions.append(a)
            extras.append(step.extra)
        return frames, (np.stack(actions) if actions else np.zeros((0, 0))), extras

    return read


def action_table(actions: np.ndarray, extras: Sequence[Any] | None) -> np.ndarray:
    """float32 [N, len(ACTION_SOURCES), A]: the step's action, then each extra source
    (NaN where a step lacks it or it is malformed)."""
    n, a = actions.shape
    out = np.full((n, len(ACTION_SOURCES), a), np.nan, dtype=np.float32)
    out[:, 0] = actions
    for i, ex in enumerate(extras or ()):
        if not isinstance(ex, dict):
            continue
        for j, key in enumerate(ACTION_SOURCES[1:], start=1):
            v = ex.get(key)
            if isinstance(v, list) and len(v) == a:
                with contextlib.suppress(TypeError, ValueError):
                    out[i, j] = np.asarray(v, dtype=np.float64)
    return out


def load_entry(path: Path) -> CachedFrames | None:
    """The entry at ``path``, or None if there is none or it is damaged (then removed)."""
    if not (path / "meta.json").is_file():
        return None
    try:
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
        frames = np.load(path / "frames.npy", mmap_mode="r")
        actions = np.load(path / "actions.npy")
        n = int(meta["num_steps"])
        if (
            meta.get("format") != FORMAT
            or frames.shape[0] != n
            or actions.shape[:2] != (n, len(ACTION_SOURCES))
        ):
            raise ValueError("shapes or format differ from meta.json")
        return CachedFrames(path, str(meta["episode_id"]), frames, actions, meta)
    except (OSError, ValueError, KeyError, TypeError):
        shutil.rmtree(path, ignore_errors=True)
        return None


def load_or_build(
    cache_dir: Path,
    *,
    checksum: str,
    episode_id: str,
    image_hw: tuple[int, int],
    resize: Resize,
    read: EpisodeReader,
    threads: int = 1,
    meta: dict[str, Any] | None = None,
) -> CachedFrames:
    """The cached entry of one episode, decoding it first if needed.

    ``meta`` (JSON) is stored in the entry's ``meta.json`` when it is built (e.g. the
    track, for a later split).
    """
    cache_dir = Path(cache_dir)
    final = cache_dir / cache_key(checksum, image_hw)
    got = load_entry(final)
    if got is not None:
        return got
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        _build(tmp, episode_id, image_hw, resize, read, threads, meta or {}, checksum)
        try:
            move(tmp, final)
        except OSError:
            if not (final / "meta.json").is_file():  # not a concurrent builder winning
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    entry = load_entry(final)
    if entry is None:
        raise FrameCacheError(f"episode {episode_id}: the cache entry {final} does not load")
    return entry


def _build(
    tmp: Path,
    episode_id: str,
    image_hw: tuple[int, int],
    resize: Resize,
    read: EpisodeReader,
    threads: int,
    meta: dict[str, Any],
    checksum: str,
) -> None:
    jpegs, actions, extras = read()
    n = len(jpegs)
    if actions.ndim != 2 or actions.shape[0] != n:
        raise FrameCacheError(f"episode {episode_id}: actions {actions.shape} for {n} steps")
    h, w = image_hw

    def decode(i: int) -> np.ndarray:
        rgb = rlds_images.decode_jpeg(jpegs[i])
        if rgb is None:
            raise FrameCacheError(f"episode {episode_id}: step {i}: the JPEG does not decode")
        img = resize(rgb)
        if img.shape != (h, w, 3) or img.dtype != np.uint8:
            raise FrameCacheError(
                f"episode {episode_id}: the resized frame is {img.dtype}{img.shape}, "
                f"not uint8{(h, w, 3)}"
            )
        return img

    frames = np.lib.format.open_memmap(
        tmp / "frames.npy", mode="w+", dtype=np.uint8, shape=(n, h, w, 3)
    )
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for i, img in enumerate(pool.map(decode, range(n))):
            frames[i] = img
    frames.flush()
    del frames
    np.save(tmp / "actions.npy", action_table(actions, extras))
    info = {
        **meta,
        "format": FORMAT,
        "episode_id": episode_id,
        "num_steps": n,
        "checksum": checksum,
        "image_hw": [h, w],
        "action_sources": list(ACTION_SOURCES),
    }
    (tmp / "meta.json").write_text(json.dumps(info, indent=1, sort_keys=True), encoding="utf-8")
    for name in ("frames.npy", "actions.npy", "meta.json"):
        with open(tmp / name, "rb") as f:
            os.fsync(f.fileno())
    fsync_dir(tmp)

"""Shared helpers for the rlds tests: deterministic steps from (seed, index).

Every step's content is a pure function of the episode seed and the step
index, so a test (or the crash test's parent process) can regenerate exactly
what a writer was given and compare what was read back bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rlds.types import StepInput
from rlds.writer import EpisodeWriter

H, W = 48, 64
DT = 0.02


def frame(seed: int, k: int) -> np.ndarray:
    """Camera frame k: smooth gradient + noise (JPEG-friendly, but not trivial)."""
    rng = np.random.default_rng([seed, k, 1])
    y, x = np.mgrid[0:H, 0:W]
    base = np.stack([x * 3 + k, y * 4, (x + y) * 2], axis=-1) + rng.integers(0, 12, (H, W, 3))
    return np.clip(base, 0, 255).astype(np.uint8)


def depth(seed: int, k: int) -> np.ndarray:
    rng = np.random.default_rng([seed, k, 2])
    return rng.integers(0, 65536, (H, W), dtype=np.uint16)


def action(seed: int, i: int) -> np.ndarray:
    rng = np.random.default_rng([seed, i, 3])
    a = rng.standard_normal(2)
    if i % 7 == 3:
        a[1] = np.nan  # "hold" values must survive the trip
    if i % 11 == 5:
        a[0] = -np.inf
    return a


def make_step(seed: int, i: int, frames: dict[int, np.ndarray] | None = None) -> StepInput:
    """Step i; a new camera frame every 2 steps (frames cache passes the same object again)."""
    k = i // 2
    if frames is not None:
        img = frames.get(k)
        if img is None:
            frames.clear()
            img = frames[k] = frame(seed, k)
    else:
        img = frame(seed, k)
    rng = np.random.default_rng([seed, i, 4])
    return StepInput(
        t=100.0 + i * DT,
        action=action(seed, i),
        reward=float(rng.standard_normal()),
        discount=1.0 if i % 5 else 0.99,
        observation={
            "image": img,
            "depth": depth(seed, k),
            "state": rng.standard_normal(3).astype(np.float32),
        },
        timestamps={"image": 100.0 + k * 2 * DT - 0.013, "depth": 100.0 + k * 2 * DT - 0.011},
        extra={"frame_seq": k, "depth_seq": k, "mode": "manual", "i": i, "neutral": i % 3 == 0},
    )


def write_episode(
    root: Path, n: int, seed: int = 1, *, terminal: bool = False, **kw
) -> tuple[EpisodeWriter, object]:
    w = EpisodeWriter(root, {"seed": seed, "robot": "test", "depth_scale": 0.001}, **kw)
    frames: dict[int, np.ndarray] = {}
    for i in range(n):
        w.append(make_step(seed, i, frames))
    return w, w.close(terminal=terminal)

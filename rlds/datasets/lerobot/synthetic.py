"""In-memory episodes with a camera-like moving picture, for tests and the benchmark."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from rlds.datasets.lerobot.export import export_lerobot

# --------------------------------------------------------------------------- bench


def bench(
    num_episodes: int = 8,
    steps: int = 100,
    size: tuple[int, int] = (120, 160),
    out: Path | None = None,
) -> dict[str, float]:
    """Episodes (and frames) exported per second, on synthetic in-memory episodes."""
    import tempfile

    episodes = list(synthetic_episodes(num_episodes, steps, size))
    with tempfile.TemporaryDirectory() as tmp:
        dest = Path(out) if out else Path(tmp) / "ds"
        t0 = time.perf_counter()
        export_lerobot(episodes, dest)
        dt = time.perf_counter() - t0
        video_bytes = sum(p.stat().st_size for p in dest.glob("videos/**/*.mp4"))
    return {
        "episodes": num_episodes,
        "frames": num_episodes * steps,
        "seconds": dt,
        "episodes_per_s": num_episodes / dt,
        "frames_per_s": num_episodes * steps / dt,
        "video_bytes_per_frame": video_bytes / (num_episodes * steps),
    }


# --------------------------------------------------------------------------- synthetic


class SyntheticEpisode:
    """An in-memory stand-in for ``rlds.reader.Episode`` (tests and benchmarks)."""

    def __init__(self, episode_id: str, metadata: dict[str, Any], steps: list[Any]) -> None:
        self.episode_id = episode_id
        self.metadata = {"episode_id": episode_id, "num_steps": len(steps), **metadata}
        self._steps = steps
        self.truncated = False

    @property
    def num_steps(self) -> int:
        return len(self._steps)

    def steps(self, decode_images: bool = True) -> Iterable[Any]:
        return iter(self._steps)


def synthetic_frame(k: int, size: tuple[int, int]) -> np.ndarray:
    """A smooth moving pattern (compresses like camera video, unlike noise)."""
    h, w = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    r = 128 + 100 * np.sin((x + 3 * k) / 11.0)
    g = 128 + 100 * np.cos((y - 2 * k) / 9.0)
    b = 128 + 60 * np.sin((x + y + 5 * k) / 17.0)
    frame: np.ndarray = np.clip(np.stack([r, g, b], axis=-1), 0, 255).astype(np.uint8)
    return frame


def synthetic_episodes(
    num: int,
    steps: int,
    size: tuple[int, int] = (64, 96),
    rate_hz: float = 20.0,
    depth: bool = False,
) -> Iterable[SyntheticEpisode]:
    from rlds.types import StepData

    for e in range(num):
        out = []
        for i in range(steps):
            obs = {"image": synthetic_frame(i + 7 * e, size)}
            if depth:
                obs["depth"] = np.full(size, 1000 + i + e, dtype=np.uint16)
            out.append(
                StepData(
                    index=i,
                    t=100.0 + e + i / rate_hz,
                    is_first=i == 0,
                    is_last=i == steps - 1,
                    is_terminal=i == steps - 1,
                    action=np.array([np.sin(i / 5 + e), np.cos(i / 7)], dtype=np.float64),
                    reward=float(i % 3),
                    discount=1.0,
                    observation=obs,
                    timestamps={"image": 100.0 + e + i / rate_hz},
                    extra={},
                )
            )
        yield SyntheticEpisode(
            f"ep{e:04d}",
            {"rate_hz": rate_hz, "action_names": ["steer", "throttle"], "robot_kind": "sim"},
            out,
        )

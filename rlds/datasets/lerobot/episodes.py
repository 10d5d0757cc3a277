"""The episodes going in: their order and fps, and every step read and checked."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rlds.datasets.lerobot.layout import FPS_KEYS, SPLIT_ORDER, LeRobotExportError
from rlds.datasets.lerobot.stats import downsample, sample_indices
from rlds.datasets.lerobot.video import VideoFiles
from rlds.errors import EpisodeError


def resolve_fps(episodes: Sequence[Any], fps: float | None) -> int:
    if fps is None:
        found = set()
        for ep in episodes:
            val = next((ep.metadata[k] for k in FPS_KEYS if ep.metadata.get(k)), None)
            if val is None:
                raise LeRobotExportError(
                    f"episode {ep.episode_id}: metadata has no control rate "
                    f"({' / '.join(FPS_KEYS)}); pass fps="
                )
            found.add(float(val))
        if len(found) != 1:
            raise LeRobotExportError(
                f"episodes were recorded at different rates {sorted(found)}; "
                "a LeRobot dataset has one fps: export them separately"
            )
        fps = found.pop()
    if not (isinstance(fps, int | float) and math.isfinite(fps) and fps > 0):
        raise LeRobotExportError(f"fps must be a positive number, got {fps!r}")
    if abs(fps - round(fps)) > 1e-6:
        raise LeRobotExportError(f"LeRobot needs an integer fps, got {fps}")
    return round(fps)


def order_by_split(
    episodes: Sequence[Any], splits: dict[str, str] | None
) -> tuple[list[Any], dict[str, str], list[str | None]]:
    if splits is None:
        return list(episodes), {"train": f"0:{len(episodes)}"}, [None] * len(episodes)
    missing = [ep.episode_id for ep in episodes if ep.episode_id not in splits]
    if missing:
        raise LeRobotExportError(f"splits has no entry for episodes {missing}")
    names = sorted(
        {splits[ep.episode_id] for ep in episodes},
        key=lambda s: (SPLIT_ORDER.index(s) if s in SPLIT_ORDER else len(SPLIT_ORDER), s),
    )
    ordered: list[Any] = []
    ranges: dict[str, str] = {}
    labels: list[str | None] = []
    for name in names:
        group = [ep for ep in episodes if splits[ep.episode_id] == name]
        ranges[name] = f"{len(ordered)}:{len(ordered) + len(group)}"
        ordered.extend(group)
        labels.extend([name] * len(group))
    return ordered, ranges, labels


def common_value(episodes: Sequence[Any], key: str) -> Any:
    values = [ep.metadata.get(key) for ep in episodes]
    return values[0] if all(v == values[0] for v in values) else None


@dataclass
class EpisodeColumns:
    """Columns of one episode gathered while streaming its steps."""

    actions: list[np.ndarray] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    t: list[float] = field(default_factory=list)
    is_last: list[bool] = field(default_factory=list)
    is_terminal: list[bool] = field(default_factory=list)
    depth_png: list[bytes] = field(default_factory=list)
    image_samples: list[np.ndarray] = field(default_factory=list)
    depth_samples: list[np.ndarray] = field(default_factory=list)


@dataclass
class FrameChecks:
    """What every frame of the dataset must share, fixed by the first frame seen."""

    action_names: list[str] | None
    action_dim: int | None = None
    image_shape: tuple[int, int] | None = None
    depth_shape: tuple[int, ...] | None = None

    def action(self, at: str, step: Any) -> np.ndarray:
        action = np.asarray(step.action, dtype=np.float64).reshape(-1)
        if self.action_dim is None:
            self.action_dim = len(action)
            if self.action_names is not None and len(self.action_names) != self.action_dim:
                raise LeRobotExportError(
                    f"{at}: action has {self.action_dim} values but action_names "
                    f"has {len(self.action_names)}"
                )
        if len(action) != self.action_dim:
            raise LeRobotExportError(
                f"{at}: action has {len(action)} values, expected {self.action_dim}"
            )
        if not np.all(np.isfinite(action)):
            raise LeRobotExportError(f"{at}: action is not finite: {action}")
        return action

    def image(self, at: str, step: Any) -> np.ndarray:
        img = step.observation.get("image")
        if img is None:
            raise LeRobotExportError(f"{at}: no 'image' observation")
        img = np.asarray(img)
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise LeRobotExportError(
                f"{at}: image must be HxWx3 uint8, got {img.shape} {img.dtype}"
            )
        if self.image_shape is None:
            self.image_shape = (img.shape[0], img.shape[1])
            if self.image_shape[0] % 2 or self.image_shape[1] % 2:
                raise LeRobotExportError(
                    f"{at}: image size {self.image_shape} must be even for yuv420p video"
                )
        if img.shape[:2] != self.image_shape:
            raise LeRobotExportError(
                f"{at}: image is {img.shape[:2]}, earlier frames were {self.image_shape}"
            )
        return img

    def depth(self, at: str, step: Any) -> np.ndarray:
        d = step.observation.get("depth")
        if d is None:
            raise LeRobotExportError(f"{at}: no 'depth' observation")
        d = np.asarray(d)
        if d.dtype != np.uint16 or d.ndim != 2:
            raise LeRobotExportError(f"{at}: depth must be HxW uint16, got {d.shape} {d.dtype}")
        if self.depth_shape is None:
            self.depth_shape = d.shape
        if d.shape != self.depth_shape:
            raise LeRobotExportError(
                f"{at}: depth is {d.shape}, earlier frames were {self.depth_shape}"
            )
        return d


def read_episode(
    ep: Any, where: str, checks: FrameChecks, video: VideoFiles, depth: str
) -> EpisodeColumns:
    """Stream one episode's steps: check each, encode its frame, gather the columns.

    Any failure is a ``LeRobotExportError`` naming the episode and step.
    """
    cols = EpisodeColumns()
    n_expected = int(ep.num_steps)
    sample_at = set(sample_indices(n_expected)) if n_expected > 0 else set()
    try:
        for i, step in enumerate(ep.steps(decode_images=True)):
            at = f"{where} step {i}"
            action = checks.action(at, step)
            img = checks.image(at, step)
            video.add(np.ascontiguousarray(img))
            if i in sample_at:
                cols.image_samples.append(downsample(img.transpose(2, 0, 1)))
            if depth == "image":
                d = checks.depth(at, step)
                png = (step.encoded or {}).get("depth")
                if png is None:
                    from rlds.images import encode_png16

                    png = encode_png16(d)
                cols.depth_png.append(bytes(png))
                if i in sample_at:
                    cols.depth_samples.append(downsample(d[None]))
            cols.actions.append(action)
            cols.rewards.append(float(step.reward))
            cols.t.append(float(step.t))
            cols.is_last.append(bool(step.is_last))
            cols.is_terminal.append(bool(step.is_terminal))
    except LeRobotExportError:
        raise
    except EpisodeError as e:
        raise LeRobotExportError(f"{where} is corrupt: {e}") from e
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise LeRobotExportError(f"{where}: cannot read steps: {e}") from e

    n = len(cols.actions)
    if n == 0:
        raise LeRobotExportError(f"{where} has no steps")
    if n != n_expected:
        raise LeRobotExportError(f"{where}: read {n} steps but num_steps is {n_expected}")
    return cols

"""Frames and labels from RLDS episodes: calibration data and held-out parity sequences.

Episodes are split deterministically by position (oldest first): every ``holdout_every``-th
episode (at least one) is held out for parity, the rest calibrate the INT8 ranges.  With a
single episode, its first half calibrates and its second half is the held-out sequence, and
the report says so (``heldout_disjoint: false`` cannot happen then: the halves are disjoint).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from brain.imaging import resize_rgb
from rlds.reader import list_episodes


class EpisodeDataError(ValueError):
    """The episode directory cannot provide what the export needs."""


@dataclass(frozen=True)
class Sequence:
    """Consecutive frames of one episode at the model's size, with their action labels."""

    episode_id: str
    frames: np.ndarray  # uint8 [T, H, W, 3]
    labels: np.ndarray  # float64 [T, A]

    def __len__(self) -> int:
        return len(self.frames)


def read_sequence(episode, hw: tuple[int, int], max_steps: int | None, start: int = 0) -> Sequence:
    frames: list[Any] = []
    labels: list[Any] = []
    for step in episode.steps():
        if step.index < start:
            continue
        if max_steps is not None and len(frames) >= max_steps:
            break
        img = step.observation.get("image")
        if img is None:
            raise EpisodeDataError(f"episode {episode.path}: step {step.index} has no image")
        frames.append(resize_rgb(np.asarray(img, dtype=np.uint8), hw))
        labels.append(np.asarray(step.action, dtype=np.float64).reshape(-1))
    if not frames:
        raise EpisodeDataError(f"episode {episode.path}: no steps from index {start}")
    return Sequence(
        episode_id=str(episode.episode_id), frames=np.stack(frames), labels=np.stack(labels)
    )


@dataclass(frozen=True)
class ExportData:
    calibration: list[Sequence]
    heldout: list[Sequence]
    episodes_total: int

    def summary(self) -> dict[str, object]:
        return {
            "episodes": self.episodes_total,
            "calibration_episodes": [s.episode_id for s in self.calibration],
            "calibration_frames": int(sum(len(s) for s in self.calibration)),
            "heldout_episodes": [s.episode_id for s in self.heldout],
            "heldout_steps": int(sum(len(s) for s in self.heldout)),
        }


def load_export_data(
    root: Path,
    hw: tuple[int, int],
    *,
    action_dim: int,
    holdout_every: int = 4,
    max_calibration_frames: int = 256,
    max_heldout_steps: int = 200,
    max_heldout_episodes: int = 3,
) -> ExportData:
    """Read calibration frames and held-out sequences from the committed episodes in ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise EpisodeDataError(f"{root}: no such episode directory")
    eps = list_episodes(root)
    if not eps:
        raise EpisodeDataError(f"{root}: no committed episodes (record some with record-demos)")
    if len(eps) == 1:
        ep = eps[0]
        half = max(1, ep.num_steps // 2)
        calib = [read_sequence(ep, hw, min(half, max_calibration_frames))]
        held = [read_sequence(ep, hw, max_heldout_steps, start=half)]
    else:
        held_eps = [e for i, e in enumerate(eps) if i % holdout_every == holdout_every - 1]
        if not held_eps:
            held_eps = [eps[-1]]
        held_eps = held_eps[:max_heldout_episodes]
        held_ids = {e.episode_id for e in held_eps}
        cal_eps = [e for e in eps if e.episode_id not in held_ids]
        # Spread the calibration budget over episodes (frames in driving order inside each).
        per_ep = max(1, max_calibration_frames // len(cal_eps))
        calib = []
        for e in cal_eps:
            left = max_calibration_frames - sum(len(s) for s in calib)
            if left <= 0:
                break
            calib.append(read_sequence(e, hw, min(per_ep, left)))
        held = [read_sequence(e, hw, max_heldout_steps) for e in held_eps]
    for s in calib + held:
        if s.labels.shape[1] != action_dim:
            raise EpisodeDataError(
                f"episode {s.episode_id}: actions have {s.labels.shape[1]} entries, "
                f"the policy outputs {action_dim}"
            )
    return ExportData(calibration=calib, heldout=held, episodes_total=len(eps))


def calibration_frames(data: ExportData):
    """All calibration frames in driving order (episode after episode)."""
    for s in data.calibration:
        yield from s.frames

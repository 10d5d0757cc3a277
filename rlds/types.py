"""The data classes that cross the library's boundary.

``StepInput`` is what a recorder hands the writer for one control tick; the
writer decides the RLDS flags (``is_first``/``is_last``/``is_terminal``) and the
index, because only it knows where the episode starts and ends.  ``StepData`` is
what the reader gives back: every field, with arrays decoded.  ``EpisodeInfo`` is
the summary ``EpisodeWriter.close`` returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(slots=True)
class StepInput:
    """One step to record.

    ``observation`` maps names to arrays: ``"image"`` HxWx3 uint8 RGB (stored as
    JPEG), ``"depth"`` HxW uint16 (stored as 16-bit PNG), anything else stored raw
    and bit-exact.  ``timestamps`` maps sensor names to their monotonic capture
    times.  ``encoded`` optionally carries already-encoded JPEG/PNG bytes by
    observation name, so a frame shared by several ticks is encoded once.
    """

    t: float
    action: Any  # anything np.asarray(..., float64) turns into a 1-D vector
    reward: float = 0.0
    discount: float = 1.0
    observation: dict[str, np.ndarray] = field(default_factory=dict)
    timestamps: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    encoded: dict[str, bytes] | None = None


@dataclass(slots=True)
class StepData:
    """One step as read back.

    With ``decode_images=False`` the JPEG/PNG observations are left out of
    ``observation`` and only their bytes are in ``encoded`` (which always holds
    the stored bytes of every image-coded observation).
    """

    index: int
    t: float
    is_first: bool
    is_last: bool
    is_terminal: bool
    action: np.ndarray
    reward: float
    discount: float
    observation: dict[str, np.ndarray]
    timestamps: dict[str, float]
    extra: dict[str, Any]
    encoded: dict[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EpisodeInfo:
    """What a committed episode looks like, as ``close()`` wrote it."""

    episode_id: str
    path: Path
    num_steps: int
    duration_s: float
    file_size: int
    steps_sha256: str
    terminal: bool
    metadata: dict[str, Any]

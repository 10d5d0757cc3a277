"""Where a LeRobot v3.0 dataset keeps what (paths, keys, file sizes), and the options."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rlds.errors import EpisodeError

CODEBASE_VERSION = "v3.0"
VIDEO_KEY = "observation.images.front"
DEPTH_KEY = "observation.images.front_depth"
DEFAULT_CHUNK_SIZE = 1000
DEFAULT_DATA_FILE_SIZE_IN_MB = 100
DEFAULT_VIDEO_FILE_SIZE_IN_MB = 200
CHUNK_FILE = "chunk-{chunk_index:03d}/file-{file_index:03d}"
DATA_PATH = "data/" + CHUNK_FILE + ".parquet"
VIDEO_PATH = "videos/{video_key}/" + CHUNK_FILE + ".mp4"
EPISODES_PATH = "meta/episodes/" + CHUNK_FILE + ".parquet"
TASKS_PATH = "meta/tasks.parquet"
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
SPLIT_ORDER = ("train", "val", "test")
FPS_KEYS = ("rate_hz", "fps", "control_rate_hz")


class LeRobotExportError(EpisodeError):
    """The episodes cannot be exported (inconsistent, corrupt or unsupported input)."""


def next_file(chunk: int, file: int, chunks_size: int) -> tuple[int, int]:
    """The (chunk, file) after this one: a chunk holds ``chunks_size`` files."""
    return (chunk + 1, 0) if file == chunks_size - 1 else (chunk, file + 1)


@dataclass(frozen=True)
class LeRobotOptions:
    """One export's settings, checked and resolved by ``export_lerobot``."""

    fps: int
    task: str
    state: str  # "prev_action" | "none"
    depth: str  # "skip" | "image"
    vcodec: str
    crf: int
    gop: int
    threads: int | None
    chunks_size: int
    data_mb: float
    video_mb: float
    action_names: list[str] | None
    transform_metadata: Callable[[dict[str, Any]], dict[str, Any]] | None

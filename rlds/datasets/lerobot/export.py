"""One LeRobot export run: check the arguments, then stream episodes into the files.

The run writes every episode's frames (``data``, ``video``) as it reads it, keeping
only its stats and ``meta/episodes`` row, then the ``meta/`` files; on any error
everything written is removed again.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from rlds.datasets.lerobot.data import DataFiles, frame_columns, frame_table
from rlds.datasets.lerobot.episodes import (
    FrameChecks,
    common_value,
    order_by_split,
    read_episode,
    resolve_fps,
)
from rlds.datasets.lerobot.layout import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_DATA_FILE_SIZE_IN_MB,
    DEFAULT_VIDEO_FILE_SIZE_IN_MB,
    LeRobotExportError,
    LeRobotOptions,
)
from rlds.datasets.lerobot.meta import episode_row, features, write_meta
from rlds.datasets.lerobot.stats import episode_stats
from rlds.datasets.lerobot.video import VideoFiles, choose_vcodec


def export_lerobot(
    episodes: Sequence[Any],
    out_dir: Path,
    *,
    repo_id: str = "continuon/episodes",
    fps: float | None = None,
    splits: dict[str, str] | None = None,
    transform_metadata: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    task: str = "drive the track",
    state: Literal["prev_action", "none"] = "prev_action",
    depth: Literal["skip", "image"] = "skip",
    vcodec: str | None = None,
    crf: int = 30,
    gop: int = 2,
    encoder_threads: int | None = None,
    chunks_size: int = DEFAULT_CHUNK_SIZE,
    data_files_size_in_mb: float = DEFAULT_DATA_FILE_SIZE_IN_MB,
    video_files_size_in_mb: float = DEFAULT_VIDEO_FILE_SIZE_IN_MB,
) -> list[Path]:
    """Write ``episodes`` (``rlds.reader.Episode``-like) as a LeRobot v3.0 dataset.

    ``out_dir`` must be absent or empty.  Returns the files written.  On any
    error (``LeRobotExportError``, an ``EpisodeError`` subclass, naming the
    episode and step) everything written is removed again.
    ``repo_id`` is what a reader passes to ``LeRobotDataset(repo_id, root=out_dir)``;
    it is not stored (LeRobot does not store it either).
    """
    # Fail on a missing pyarrow before anything is written.
    import pyarrow.parquet  # noqa: F401

    out_dir = Path(out_dir)
    if not episodes:
        raise LeRobotExportError("no episodes to export")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise LeRobotExportError(f"{out_dir} is not empty; export into a new directory")
    if state not in ("prev_action", "none"):
        raise LeRobotExportError(f"state must be 'prev_action' or 'none', got {state!r}")
    if depth not in ("skip", "image"):
        raise LeRobotExportError(f"depth must be 'skip' or 'image', got {depth!r}")
    if not isinstance(task, str) or not task:
        raise LeRobotExportError("task must be a non-empty string")
    fps_i = resolve_fps(episodes, fps)
    ordered, split_ranges, split_labels = order_by_split(episodes, splits)
    vcodec = vcodec or choose_vcodec()
    if vcodec == "libsvtav1":
        os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its banner per file otherwise

    action_names = common_value(ordered, "action_names")
    if any(ep.metadata.get("action_names") != action_names for ep in ordered):
        raise LeRobotExportError("episodes have different action_names; export them separately")

    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        return _export(
            ordered,
            split_labels,
            split_ranges,
            out_dir,
            LeRobotOptions(
                fps=fps_i,
                task=task,
                state=state,
                depth=depth,
                vcodec=vcodec,
                crf=crf,
                gop=gop,
                threads=encoder_threads,
                chunks_size=chunks_size,
                data_mb=data_files_size_in_mb,
                video_mb=video_files_size_in_mb,
                action_names=action_names,
                transform_metadata=transform_metadata,
            ),
        )
    except BaseException:
        if created:
            shutil.rmtree(out_dir, ignore_errors=True)
        else:
            for child in out_dir.iterdir():
                if child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
        raise


def _export(
    ordered: list[Any],
    split_labels: list[str | None],
    split_ranges: dict[str, str],
    out_dir: Path,
    opts: LeRobotOptions,
) -> list[Path]:
    written: list[Path] = []
    checks = FrameChecks(opts.action_names)
    data = DataFiles(out_dir, written, chunks_size=opts.chunks_size, max_mb=opts.data_mb)
    video = VideoFiles(
        out_dir,
        written,
        fps=opts.fps,
        vcodec=opts.vcodec,
        gop=opts.gop,
        crf=opts.crf,
        threads=opts.threads,
        chunks_size=opts.chunks_size,
        max_mb=opts.video_mb,
    )
    global_index = 0
    ep_rows: list[dict[str, Any]] = []
    all_stats: list[dict[str, dict[str, np.ndarray]]] = []
    try:
        for ep_index, (ep, split) in enumerate(zip(ordered, split_labels, strict=True)):
            video.begin_episode()
            cols = read_episode(ep, f"episode {ep.episode_id}", checks, video, opts.depth)
            n = len(cols.actions)
            columns = frame_columns(
                cols, fps=opts.fps, state=opts.state, ep_index=ep_index, global_index=global_index
            )
            with_depth = opts.depth == "image"
            data.write(frame_table(columns, cols.depth_png if with_depth else None))
            ep_stats = episode_stats(
                columns, cols.image_samples, cols.depth_samples if with_depth else None
            )
            all_stats.append(ep_stats)
            ep_rows.append(
                episode_row(
                    ep,
                    split,
                    ep_index=ep_index,
                    n=n,
                    global_index=global_index,
                    ep_stats=ep_stats,
                    data=data,
                    video=video,
                    opts=opts,
                )
            )
            global_index += n
            video.end_episode(n, more=ep_index + 1 < len(ordered))
    finally:
        data.close()
        video.close()

    assert video.first_path is not None
    write_meta(
        out_dir,
        written,
        ordered=ordered,
        ep_rows=ep_rows,
        all_stats=all_stats,
        total_frames=global_index,
        split_ranges=split_ranges,
        features=features(checks, video.first_path, opts),
        opts=opts,
    )
    return written

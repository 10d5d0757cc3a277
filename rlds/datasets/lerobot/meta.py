"""The files under ``meta/``: episodes parquet, tasks parquet, info.json, stats.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from rlds.datasets.lerobot.data import DataFiles
from rlds.datasets.lerobot.episodes import FrameChecks, common_value
from rlds.datasets.lerobot.layout import (
    CODEBASE_VERSION,
    DATA_PATH,
    DEPTH_KEY,
    EPISODES_PATH,
    TASKS_PATH,
    VIDEO_KEY,
    VIDEO_PATH,
    LeRobotExportError,
    LeRobotOptions,
)
from rlds.datasets.lerobot.stats import aggregate_stats, jsonable
from rlds.datasets.lerobot.video import VideoFiles, video_info


def tasks_table(tasks: list[str]) -> Any:
    """``meta/tasks.parquet`` as pandas writes a DataFrame indexed by task string."""
    import pyarrow as pa

    pandas_meta = {
        "index_columns": ["__index_level_0__"],
        "column_indexes": [
            {
                "name": None,
                "field_name": None,
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": {"encoding": "UTF-8"},
            }
        ],
        "columns": [
            {
                "name": "task_index",
                "field_name": "task_index",
                "pandas_type": "int64",
                "numpy_type": "int64",
                "metadata": None,
            },
            {
                "name": None,
                "field_name": "__index_level_0__",
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": None,
            },
        ],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.0",
    }
    table = pa.table(
        {
            "task_index": pa.array(range(len(tasks)), pa.int64()),
            "__index_level_0__": pa.array(tasks, pa.string()),
        }
    )
    return table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})


def episode_row(
    ep: Any,
    split: str | None,
    *,
    ep_index: int,
    n: int,
    global_index: int,
    ep_stats: dict[str, dict[str, np.ndarray]],
    data: DataFiles,
    video: VideoFiles,
    opts: LeRobotOptions,
) -> dict[str, Any]:
    """The ``meta/episodes`` row of one episode: where its frames live, its stats, provenance."""
    fps = opts.fps
    ep_video_start = video.episode_start
    meta = dict(ep.metadata)
    if opts.transform_metadata is not None:
        meta = opts.transform_metadata(meta)
        if not isinstance(meta, dict):
            raise LeRobotExportError("transform_metadata must return a dict")
    row: dict[str, Any] = {
        "episode_index": ep_index,
        "tasks": [opts.task],
        "length": n,
        "data/chunk_index": data.chunk,
        "data/file_index": data.file,
        "dataset_from_index": global_index,
        "dataset_to_index": global_index + n,
        f"videos/{VIDEO_KEY}/chunk_index": video.chunk,
        f"videos/{VIDEO_KEY}/file_index": video.file,
        f"videos/{VIDEO_KEY}/from_timestamp": ep_video_start / fps,
        f"videos/{VIDEO_KEY}/to_timestamp": (ep_video_start + n) / fps,
    }
    for feat, st in ep_stats.items():
        for name, val in st.items():
            row[f"stats/{feat}/{name}"] = jsonable(val)
    row["meta/episodes/chunk_index"] = 0
    row["meta/episodes/file_index"] = 0
    row["continuon/episode_id"] = str(meta.get("episode_id", ""))
    row["continuon/split"] = split or ""
    row["continuon/metadata"] = json.dumps(jsonable(meta), sort_keys=True, default=str)
    return row


def features(
    checks: FrameChecks, first_video_path: Path, opts: LeRobotOptions
) -> dict[str, dict[str, Any]]:
    """``info.json``'s feature declarations, in the frame columns' order."""
    action_dim, image_shape, depth_shape = checks.action_dim, checks.image_shape, checks.depth_shape
    assert action_dim is not None and image_shape is not None
    names = list(opts.action_names) if opts.action_names else [f"a{i}" for i in range(action_dim)]
    scalar = {"shape": [1], "names": None}
    features: dict[str, dict[str, Any]] = {
        VIDEO_KEY: {
            "dtype": "video",
            "shape": [image_shape[0], image_shape[1], 3],
            "names": ["height", "width", "channels"],
            "info": video_info(first_video_path),
        },
    }
    if opts.depth == "image":
        assert depth_shape is not None
        features[DEPTH_KEY] = {
            "dtype": "image",
            "shape": [depth_shape[0], depth_shape[1], 1],
            "names": ["height", "width", "channels"],
        }
    features["action"] = {"dtype": "float32", "shape": [action_dim], "names": names}
    if opts.state == "prev_action":
        features["observation.state"] = {
            "dtype": "float32",
            "shape": [action_dim],
            "names": [f"prev_{n}" for n in names],
        }
    features.update(
        {
            "next.reward": {"dtype": "float32", **scalar},
            "next.done": {"dtype": "bool", **scalar},
            "next.terminated": {"dtype": "bool", **scalar},
            "recorded_time": {"dtype": "float64", **scalar},
            "timestamp": {"dtype": "float32", **scalar},
            "frame_index": {"dtype": "int64", **scalar},
            "episode_index": {"dtype": "int64", **scalar},
            "index": {"dtype": "int64", **scalar},
            "task_index": {"dtype": "int64", **scalar},
        }
    )
    return features


def write_meta(
    out_dir: Path,
    written: list[Path],
    *,
    ordered: list[Any],
    ep_rows: list[dict[str, Any]],
    all_stats: list[dict[str, dict[str, np.ndarray]]],
    total_frames: int,
    split_ranges: dict[str, str],
    features: dict[str, dict[str, Any]],
    opts: LeRobotOptions,
) -> None:
    """Write the four ``meta/`` files once every episode's frames are written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    # ---- meta/episodes
    ep_path = out_dir / EPISODES_PATH.format(chunk_index=0, file_index=0)
    ep_path.parent.mkdir(parents=True, exist_ok=True)
    ep_table = pa.Table.from_pylist(ep_rows)
    pq.write_table(ep_table, ep_path, compression="snappy")
    written.append(ep_path)

    # ---- meta/tasks.parquet
    tasks_path = out_dir / TASKS_PATH
    pq.write_table(tasks_table([opts.task]), tasks_path)
    written.append(tasks_path)

    # ---- meta/info.json
    robot = common_value(ordered, "robot_kind") or common_value(ordered, "robot")
    info = {
        "codebase_version": CODEBASE_VERSION,
        "robot_type": robot if isinstance(robot, str) else None,
        "total_episodes": len(ordered),
        "total_frames": total_frames,
        "total_tasks": 1,
        "chunks_size": opts.chunks_size,
        "data_files_size_in_mb": opts.data_mb,
        "video_files_size_in_mb": opts.video_mb,
        "fps": opts.fps,
        "splits": split_ranges,
        "data_path": DATA_PATH,
        "video_path": VIDEO_PATH,
        "features": features,
    }
    info_path = out_dir / "meta/info.json"
    info_path.write_text(json.dumps(info, indent=4))
    written.append(info_path)

    stats_path = out_dir / "meta/stats.json"
    stats_path.write_text(json.dumps(jsonable(aggregate_stats(all_stats)), indent=4))
    written.append(stats_path)

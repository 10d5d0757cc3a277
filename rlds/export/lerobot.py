"""Export committed episodes as a LeRobotDataset, codebase version v3.0.

Layout written under ``out_dir`` (the one LeRobot 0.4.x reads from a local root)::

    meta/info.json                      schema, fps, features, path templates, splits
    meta/stats.json                     per-feature stats over the whole dataset
    meta/tasks.parquet                  task string (pandas index) -> task_index
    meta/episodes/chunk-000/file-000.parquet
                                        one row per episode: length, tasks, where its
                                        frames live (data + video chunk/file, frame
                                        range, video from/to timestamps), its stats
    data/chunk-XXX/file-YYY.parquet     one row per frame, episodes back to back
    videos/observation.images.front/chunk-XXX/file-YYY.mp4
                                        the frames of consecutive episodes in one
                                        stream; an episode's frames start at its
                                        ``from_timestamp``

Choices (LeRobot conventions where it has one):

* ``timestamp`` is ``frame_index / fps``, not the robot clock: LeRobot finds a
  frame's image by seeking the video to ``from_timestamp + timestamp`` with a
  tolerance of about 1e-4 s, and the video has exactly one frame per step at
  ``1/fps`` spacing.  The recorded time (seconds since the episode's first step,
  monotonic clock) is kept as the float64 feature ``recorded_time``.
* ``observation.state``: the car has no proprioception, so by default the state is
  the previous step's action (zeros on the first step; names ``prev_<action>``).
  It is causal (never the action being predicted) and is what most LeRobot
  policies need as a state input.  ``state="none"`` leaves it out.
* RLDS reward/termination map onto LeRobot's ``next.reward`` (float32),
  ``next.done`` (the episode's last step) and ``next.terminated`` (RLDS
  ``is_terminal``: a true end, as opposed to a cut-off).
* Depth: LeRobot has no 16-bit video, and an 8-bit or lossy video would corrupt
  geometry.  ``depth="skip"`` (default) leaves it out; ``depth="image"`` stores
  the lossless 16-bit PNGs as the ``image`` feature
  ``observation.images.front_depth`` (shape HxWx1, raw sensor units; its stats
  are in those units, not divided by 255, and the metadata ``depth_scale`` if
  recorded says what a unit is).  Parquet grows by the PNG size per frame.
  LeRobot 0.4.4 hands such an image out as an int16 (1, H, W) tensor of raw
  units, so values above 32767 wrap (32.7 m at 1 mm/unit).
* Video: AV1 (``libsvtav1``, LeRobot's default: crf 30, preset 12) when PyAV's
  FFmpeg has it, otherwise H.264 (``libx264``); yuv420p; a key frame every
  ``gop`` frames (LeRobot's default 2) so seeking to any frame decodes at most
  one extra frame.
* Stats follow LeRobot's ``compute_episode_stats``/``aggregate_stats``: min, max,
  mean, std, count and quantiles q01 q10 q50 q90 q99 per feature; images are
  sampled (all frames up to 100, then ~n**0.75), downsampled above 300 px, and
  reduced per channel in [0, 1] with shape (3, 1, 1).  Quantiles are exact here
  (LeRobot estimates them from histograms), per-dataset quantiles are the
  count-weighted mean of the episodes' as in LeRobot.
* Splits: ``splits`` maps episode_id -> split name.  Episodes are written grouped
  by split (train, val, test, then other names sorted; input order within a
  split), so each split is a contiguous ``"start:end"`` range of episode indices
  in ``info.json``, which is LeRobot's form.
* Per-episode provenance goes into extra columns of the episodes parquet:
  ``continuon/episode_id``, ``continuon/split`` and ``continuon/metadata`` (JSON
  of the metadata after ``transform_metadata``; the raw id is never written when
  a transform is given, only what the transform returns).

Requires the ``export`` extra (``pyarrow``, ``av``).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import numpy as np

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


# --------------------------------------------------------------------------- stats


def _quantile_keys() -> list[str]:
    return [f"q{round(q * 100):02d}" for q in QUANTILES]


def _vector_stats(x: np.ndarray) -> dict[str, np.ndarray]:
    """Stats over axis 0 of an (N,) or (N, D) array, shaped as LeRobot keeps them."""
    x = np.asarray(x)
    if x.dtype == bool:
        x = x.astype(np.float64)
    flat = x.reshape(len(x), -1).astype(np.float64)
    out = {
        "min": flat.min(axis=0),
        "max": flat.max(axis=0),
        "mean": flat.mean(axis=0),
        "std": flat.std(axis=0),
        "count": np.array([len(x)], dtype=np.int64),
    }
    qs = np.quantile(flat, QUANTILES, axis=0)
    for key, q in zip(_quantile_keys(), qs, strict=True):
        out[key] = q
    return out


def _image_stats(images: np.ndarray, scale: float = 255.0) -> dict[str, np.ndarray]:
    """Per-channel stats of (N, C, H, W) samples, divided by ``scale``, shapes (C, 1, 1)."""
    n, c = images.shape[:2]
    per_pixel = images.transpose(0, 2, 3, 1).reshape(-1, c).astype(np.float64)
    out = {
        "min": per_pixel.min(axis=0),
        "max": per_pixel.max(axis=0),
        "mean": per_pixel.mean(axis=0),
        "std": per_pixel.std(axis=0),
    }
    qs = np.quantile(per_pixel, QUANTILES, axis=0)
    for key, q in zip(_quantile_keys(), qs, strict=True):
        out[key] = q
    res = {k: (v / scale).reshape(c, 1, 1) for k, v in out.items()}
    res["count"] = np.array([n], dtype=np.int64)
    return res


def aggregate_stats(
    per_episode: Sequence[dict[str, dict[str, np.ndarray]]],
) -> dict[str, Any]:
    """Combine episode stats: count-weighted mean, pooled variance, min of mins ...

    Quantiles are combined as LeRobot does, by a count-weighted mean.
    """
    keys: list[str] = []
    for st in per_episode:
        keys.extend(k for k in st if k not in keys)
    out: dict[str, dict[str, np.ndarray]] = {}
    for key in keys:
        items = [st[key] for st in per_episode if key in st]
        counts = np.stack([s["count"] for s in items]).astype(np.float64)
        means = np.stack([s["mean"] for s in items])
        w = counts.reshape(counts.shape[0], *([1] * (means.ndim - 1)))
        total = counts.sum()
        mean = (means * w).sum(axis=0) / total
        var = ((np.stack([s["std"] for s in items]) ** 2 + (means - mean) ** 2) * w).sum(
            axis=0
        ) / total
        agg = {
            "min": np.min(np.stack([s["min"] for s in items]), axis=0),
            "max": np.max(np.stack([s["max"] for s in items]), axis=0),
            "mean": mean,
            "std": np.sqrt(var),
            "count": np.array([int(total)], dtype=np.int64),
        }
        for q in _quantile_keys():
            agg[q] = (np.stack([s[q] for s in items]) * w).sum(axis=0) / total
        out[key] = agg
    return out


def _sample_indices(n: int) -> list[int]:
    """LeRobot's image sampling: every frame up to 100, then about n**0.75 (max 10k)."""
    num = n if n < 100 else max(100, min(int(n**0.75), 10_000))
    indices: list[int] = np.round(np.linspace(0, n - 1, num)).astype(int).tolist()
    return indices


def _downsample(chw: np.ndarray) -> np.ndarray:
    """LeRobot's stats downsampling: images of 300 px or more go to about 150 px."""
    _, h, w = chw.shape
    if max(h, w) < 300:
        return chw
    step = int(w / 150) if w > h else int(h / 150)
    return chw[:, ::step, ::step]


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    return obj


# --------------------------------------------------------------------------- video


def choose_vcodec() -> str:
    """``libsvtav1`` if PyAV's FFmpeg can encode AV1 with it, else ``libx264``."""
    import av

    for name in ("libsvtav1", "libx264"):
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:
            continue
    raise LeRobotExportError("PyAV offers neither libsvtav1 nor libx264 to encode video")


def _codec_options(vcodec: str, gop: int, crf: int, threads: int | None) -> dict[str, str]:
    opts = {"g": str(gop), "crf": str(crf)}
    if vcodec == "libsvtav1":
        opts["preset"] = "12"
        if threads:
            opts["svtav1-params"] = f"lp={threads}"
    elif threads:
        opts["threads"] = str(threads)
    return opts


class _VideoFile:
    """One mp4 being written: frames get pts = frame number, time base 1/fps."""

    def __init__(
        self,
        path: Path,
        fps: int,
        vcodec: str,
        width: int,
        height: int,
        gop: int,
        crf: int,
        threads: int | None = None,
    ):
        import av

        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.container = av.open(str(path), "w")
        stream = self.container.add_stream(
            vcodec, rate=fps, options=_codec_options(vcodec, gop, crf, threads)
        )
        if not isinstance(stream, av.VideoStream):
            raise ValueError(f"{vcodec!r} is not a video codec")
        self.stream = stream
        self.stream.width = width
        self.stream.height = height
        self.stream.pix_fmt = "yuv420p"
        if threads:
            self.stream.codec_context.thread_count = threads
        self.time_base = Fraction(1, fps)
        self.frames = 0
        self.bytes = 0  # encoded so far (the file itself is written lazily)

    def add(self, rgb: np.ndarray) -> None:
        import av

        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        frame.pts = self.frames
        frame.time_base = self.time_base
        for packet in self.stream.encode(frame):
            self.bytes += packet.size
            self.container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()


def video_info(path: Path) -> dict[str, Any]:
    """The ``info`` block LeRobot keeps for a video feature, read back from the file."""
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        info = {
            "video.height": s.height,
            "video.width": s.width,
            "video.codec": s.codec_context.codec.canonical_name,
            "video.pix_fmt": s.pix_fmt,
            "video.is_depth_map": False,
            "video.fps": int(s.base_rate or 0),
            "video.channels": 3,
            "has_audio": False,
        }
    return info


# --------------------------------------------------------------------------- helpers


def _next_file(chunk: int, file: int, chunks_size: int) -> tuple[int, int]:
    return (chunk + 1, 0) if file == chunks_size - 1 else (chunk, file + 1)


def _resolve_fps(episodes: Sequence[Any], fps: float | None) -> int:
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


def _order_by_split(
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


def _common(episodes: Sequence[Any], key: str) -> Any:
    values = [ep.metadata.get(key) for ep in episodes]
    return values[0] if all(v == values[0] for v in values) else None


def _tasks_table(tasks: list[str]) -> Any:
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


@dataclass
class _Episode:
    """Columns of one episode gathered while streaming its steps."""

    actions: list[np.ndarray] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    t: list[float] = field(default_factory=list)
    is_last: list[bool] = field(default_factory=list)
    is_terminal: list[bool] = field(default_factory=list)
    depth_png: list[bytes] = field(default_factory=list)
    image_samples: list[np.ndarray] = field(default_factory=list)
    depth_samples: list[np.ndarray] = field(default_factory=list)


# --------------------------------------------------------------------------- export


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
    import pyarrow as pa
    import pyarrow.parquet as pq

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
    fps_i = _resolve_fps(episodes, fps)
    ordered, split_ranges, split_labels = _order_by_split(episodes, splits)
    vcodec = vcodec or choose_vcodec()
    if vcodec == "libsvtav1":
        os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its banner per file otherwise

    action_names = _common(ordered, "action_names")
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
            fps=fps_i,
            transform_metadata=transform_metadata,
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
            pa=pa,
            pq=pq,
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
    *,
    fps: int,
    transform_metadata: Callable[[dict[str, Any]], dict[str, Any]] | None,
    task: str,
    state: str,
    depth: str,
    vcodec: str,
    crf: int,
    gop: int,
    threads: int | None,
    chunks_size: int,
    data_mb: float,
    video_mb: float,
    action_names: list[str] | None,
    pa: Any,
    pq: Any,
) -> list[Path]:
    written: list[Path] = []
    action_dim: int | None = None
    image_shape: tuple[int, int] | None = None
    depth_shape: tuple[int, int] | None = None

    data_chunk = data_file = 0
    data_writer = None
    data_bytes = 0
    video_chunk = video_file = 0
    video: _VideoFile | None = None
    video_start_frame = 0  # frames already in the current video file
    global_index = 0
    ep_rows: list[dict[str, Any]] = []
    all_stats: list[dict[str, dict[str, np.ndarray]]] = []
    first_video_path: Path | None = None
    data_schema = None

    def open_data_writer(schema: Any) -> Any:
        path = out_dir / DATA_PATH.format(chunk_index=data_chunk, file_index=data_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        written.append(path)
        return pq.ParquetWriter(path, schema, compression="snappy", use_dictionary=True)

    try:
        for ep_index, (ep, split) in enumerate(zip(ordered, split_labels, strict=True)):
            cols = _Episode()
            n_expected = int(ep.num_steps)
            sample_at = set(_sample_indices(n_expected)) if n_expected > 0 else set()
            ep_video_start = video_start_frame
            where = f"episode {ep.episode_id}"
            try:
                for i, step in enumerate(ep.steps(decode_images=True)):
                    at = f"{where} step {i}"
                    action = np.asarray(step.action, dtype=np.float64).reshape(-1)
                    if action_dim is None:
                        action_dim = len(action)
                        if action_names is not None and len(action_names) != action_dim:
                            raise LeRobotExportError(
                                f"{at}: action has {action_dim} values but action_names "
                                f"has {len(action_names)}"
                            )
                    if len(action) != action_dim:
                        raise LeRobotExportError(
                            f"{at}: action has {len(action)} values, expected {action_dim}"
                        )
                    if not np.all(np.isfinite(action)):
                        raise LeRobotExportError(f"{at}: action is not finite: {action}")
                    img = step.observation.get("image")
                    if img is None:
                        raise LeRobotExportError(f"{at}: no 'image' observation")
                    img = np.asarray(img)
                    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
                        raise LeRobotExportError(
                            f"{at}: image must be HxWx3 uint8, got {img.shape} {img.dtype}"
                        )
                    if image_shape is None:
                        image_shape = (img.shape[0], img.shape[1])
                        if image_shape[0] % 2 or image_shape[1] % 2:
                            raise LeRobotExportError(
                                f"{at}: image size {image_shape} must be even for yuv420p video"
                            )
                    if img.shape[:2] != image_shape:
                        raise LeRobotExportError(
                            f"{at}: image is {img.shape[:2]}, earlier frames were {image_shape}"
                        )
                    if video is None:
                        vpath = out_dir / VIDEO_PATH.format(
                            video_key=VIDEO_KEY, chunk_index=video_chunk, file_index=video_file
                        )
                        video = _VideoFile(
                            vpath, fps, vcodec, image_shape[1], image_shape[0], gop, crf, threads
                        )
                        written.append(vpath)
                        first_video_path = first_video_path or vpath
                        video_start_frame = ep_video_start = 0
                    video.add(np.ascontiguousarray(img))
                    if i in sample_at:
                        cols.image_samples.append(_downsample(img.transpose(2, 0, 1)))
                    if depth == "image":
                        d = step.observation.get("depth")
                        if d is None:
                            raise LeRobotExportError(f"{at}: no 'depth' observation")
                        d = np.asarray(d)
                        if d.dtype != np.uint16 or d.ndim != 2:
                            raise LeRobotExportError(
                                f"{at}: depth must be HxW uint16, got {d.shape} {d.dtype}"
                            )
                        if depth_shape is None:
                            depth_shape = d.shape
                        if d.shape != depth_shape:
                            raise LeRobotExportError(
                                f"{at}: depth is {d.shape}, earlier frames were {depth_shape}"
                            )
                        png = (step.encoded or {}).get("depth")
                        if png is None:
                            from rlds.images import encode_png16

                            png = encode_png16(d)
                        cols.depth_png.append(bytes(png))
                        if i in sample_at:
                            cols.depth_samples.append(_downsample(d[None]))
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

            # ---- frame columns
            actions = np.stack(cols.actions).astype(np.float32)
            frame_index = np.arange(n, dtype=np.int64)
            timestamp = (frame_index / fps).astype(np.float32)
            t = np.asarray(cols.t, dtype=np.float64)
            recorded = t - t[0]
            columns: dict[str, np.ndarray] = {"action": actions}
            if state == "prev_action":
                prev = np.zeros_like(actions)
                prev[1:] = actions[:-1]
                columns["observation.state"] = prev
            columns.update(
                {
                    "next.reward": np.asarray(cols.rewards, dtype=np.float32),
                    "next.done": np.asarray(cols.is_last, dtype=bool),
                    "next.terminated": np.asarray(cols.is_terminal, dtype=bool),
                    "recorded_time": recorded,
                    "timestamp": timestamp,
                    "frame_index": frame_index,
                    "episode_index": np.full(n, ep_index, dtype=np.int64),
                    "index": np.arange(global_index, global_index + n, dtype=np.int64),
                    "task_index": np.zeros(n, dtype=np.int64),
                }
            )
            arrays: dict[str, Any] = {}
            for key, val in columns.items():
                if val.ndim == 2:
                    arrays[key] = pa.FixedSizeListArray.from_arrays(
                        pa.array(val.reshape(-1)), val.shape[1]
                    )
                else:
                    arrays[key] = pa.array(val)
            if depth == "image":
                arrays[DEPTH_KEY] = pa.array(
                    [{"bytes": b, "path": None} for b in cols.depth_png],
                    pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
                )
            table = pa.table(arrays)
            if data_schema is None:
                data_schema = table.schema
            table = table.cast(data_schema)

            # ---- roll over data / video files at episode boundaries
            if data_writer is not None and data_bytes >= data_mb * 1024 * 1024:
                data_writer.close()
                data_chunk, data_file = _next_file(data_chunk, data_file, chunks_size)
                data_writer, data_bytes = None, 0
            if data_writer is None:
                data_writer = open_data_writer(data_schema)
            data_writer.write_table(table)
            data_bytes += table.nbytes

            # ---- stats
            ep_stats = {key: _vector_stats(val) for key, val in columns.items()}
            ep_stats[VIDEO_KEY] = _image_stats(np.stack(cols.image_samples))
            if depth == "image":
                ep_stats[DEPTH_KEY] = _image_stats(np.stack(cols.depth_samples), scale=1.0)
            all_stats.append(ep_stats)

            # ---- episode row
            meta = dict(ep.metadata)
            if transform_metadata is not None:
                meta = transform_metadata(meta)
                if not isinstance(meta, dict):
                    raise LeRobotExportError("transform_metadata must return a dict")
            row: dict[str, Any] = {
                "episode_index": ep_index,
                "tasks": [task],
                "length": n,
                "data/chunk_index": data_chunk,
                "data/file_index": data_file,
                "dataset_from_index": global_index,
                "dataset_to_index": global_index + n,
                f"videos/{VIDEO_KEY}/chunk_index": video_chunk,
                f"videos/{VIDEO_KEY}/file_index": video_file,
                f"videos/{VIDEO_KEY}/from_timestamp": ep_video_start / fps,
                f"videos/{VIDEO_KEY}/to_timestamp": (ep_video_start + n) / fps,
            }
            for feat, st in ep_stats.items():
                for name, val in st.items():
                    row[f"stats/{feat}/{name}"] = _jsonable(val)
            row["meta/episodes/chunk_index"] = 0
            row["meta/episodes/file_index"] = 0
            row["continuon/episode_id"] = str(meta.get("episode_id", ""))
            row["continuon/split"] = split or ""
            row["continuon/metadata"] = json.dumps(_jsonable(meta), sort_keys=True, default=str)
            ep_rows.append(row)

            global_index += n
            video_start_frame = ep_video_start + n
            assert video is not None
            if video.bytes >= video_mb * 1024 * 1024 and ep_index + 1 < len(ordered):
                video.close()
                video = None
                video_chunk, video_file = _next_file(video_chunk, video_file, chunks_size)
    finally:
        if data_writer is not None:
            data_writer.close()
        if video is not None:
            video.close()

    assert action_dim is not None and image_shape is not None and first_video_path is not None
    names = list(action_names) if action_names else [f"a{i}" for i in range(action_dim)]

    # ---- meta/episodes
    ep_path = out_dir / EPISODES_PATH.format(chunk_index=0, file_index=0)
    ep_path.parent.mkdir(parents=True, exist_ok=True)
    ep_table = pa.Table.from_pylist(ep_rows)
    pq.write_table(ep_table, ep_path, compression="snappy")
    written.append(ep_path)

    # ---- meta/tasks.parquet
    tasks_path = out_dir / TASKS_PATH
    pq.write_table(_tasks_table([task]), tasks_path)
    written.append(tasks_path)

    # ---- meta/info.json
    scalar = {"shape": [1], "names": None}
    features: dict[str, dict[str, Any]] = {
        VIDEO_KEY: {
            "dtype": "video",
            "shape": [image_shape[0], image_shape[1], 3],
            "names": ["height", "width", "channels"],
            "info": video_info(first_video_path),
        },
    }
    if depth == "image":
        assert depth_shape is not None
        features[DEPTH_KEY] = {
            "dtype": "image",
            "shape": [depth_shape[0], depth_shape[1], 1],
            "names": ["height", "width", "channels"],
        }
    features["action"] = {"dtype": "float32", "shape": [action_dim], "names": names}
    if state == "prev_action":
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
    robot = _common(ordered, "robot_kind") or _common(ordered, "robot")
    info = {
        "codebase_version": CODEBASE_VERSION,
        "robot_type": robot if isinstance(robot, str) else None,
        "total_episodes": len(ordered),
        "total_frames": global_index,
        "total_tasks": 1,
        "chunks_size": chunks_size,
        "data_files_size_in_mb": data_mb,
        "video_files_size_in_mb": video_mb,
        "fps": fps,
        "splits": split_ranges,
        "data_path": DATA_PATH,
        "video_path": VIDEO_PATH,
        "features": features,
    }
    info_path = out_dir / "meta/info.json"
    info_path.write_text(json.dumps(info, indent=4))
    written.append(info_path)

    stats_path = out_dir / "meta/stats.json"
    stats_path.write_text(json.dumps(_jsonable(aggregate_stats(all_stats)), indent=4))
    written.append(stats_path)
    return written


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

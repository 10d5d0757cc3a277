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

The modules, one job each: ``episodes`` (choosing the order and fps, reading and
checking every step), ``data`` (the frame parquet files), ``video`` (the mp4
files), ``stats``, ``meta`` (info/stats/tasks/episodes under ``meta/``),
``layout`` (paths and keys), ``export`` (the whole run) and ``synthetic``
(in-memory episodes for tests and the benchmark).
"""

from __future__ import annotations

from rlds.datasets.lerobot.export import export_lerobot
from rlds.datasets.lerobot.layout import (
    CODEBASE_VERSION,
    DEPTH_KEY,
    VIDEO_KEY,
    LeRobotExportError,
)
from rlds.datasets.lerobot.stats import aggregate_stats
from rlds.datasets.lerobot.synthetic import (
    SyntheticEpisode,
    bench,
    synthetic_episodes,
    synthetic_frame,
)
from rlds.datasets.lerobot.video import choose_vcodec, video_info

__all__ = [
    "CODEBASE_VERSION",
    "DEPTH_KEY",
    "VIDEO_KEY",
    "LeRobotExportError",
    "SyntheticEpisode",
    "aggregate_stats",
    "bench",
    "choose_vcodec",
    "export_lerobot",
    "synthetic_episodes",
    "synthetic_frame",
    "video_info",
]

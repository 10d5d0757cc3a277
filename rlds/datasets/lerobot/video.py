"""The mp4 files of the camera feature: codec choice, encoding, rolling over files."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from rlds.datasets.lerobot.layout import VIDEO_KEY, VIDEO_PATH, LeRobotExportError, next_file


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


class VideoFile:
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


class VideoFiles:
    """The camera feature's mp4 files, filled episode after episode.

    A file is opened at the first frame of the first episode that needs one and
    is closed, moving on to the next file name, only at an episode boundary once
    it holds ``max_mb`` of encoded video, so an episode never spans two files.
    """

    def __init__(
        self,
        out_dir: Path,
        written: list[Path],
        *,
        fps: int,
        vcodec: str,
        gop: int,
        crf: int,
        threads: int | None,
        chunks_size: int,
        max_mb: float,
    ) -> None:
        self.out_dir, self.written = out_dir, written
        self.fps, self.vcodec, self.gop, self.crf, self.threads = fps, vcodec, gop, crf, threads
        self.chunks_size, self.max_mb = chunks_size, max_mb
        self.chunk = self.file = 0
        self.video: VideoFile | None = None
        self.start_frame = 0  # frames already in the current video file
        self.episode_start = 0  # the current episode's first frame in that file
        self.first_path: Path | None = None

    def begin_episode(self) -> None:
        self.episode_start = self.start_frame

    def add(self, rgb: np.ndarray) -> None:
        if self.video is None:
            height, width = rgb.shape[:2]
            vpath = self.out_dir / VIDEO_PATH.format(
                video_key=VIDEO_KEY, chunk_index=self.chunk, file_index=self.file
            )
            self.video = VideoFile(
                vpath, self.fps, self.vcodec, width, height, self.gop, self.crf, self.threads
            )
            self.written.append(vpath)
            self.first_path = self.first_path or vpath
            self.start_frame = self.episode_start = 0
        self.video.add(rgb)

    def end_episode(self, n: int, more: bool) -> None:
        """The episode's ``n`` frames are in; roll over if full and ``more`` episodes follow."""
        self.start_frame = self.episode_start + n
        assert self.video is not None
        if self.video.bytes >= self.max_mb * 1024 * 1024 and more:
            self.video.close()
            self.video = None
            self.chunk, self.file = next_file(self.chunk, self.file, self.chunks_size)

    def close(self) -> None:
        if self.video is not None:
            self.video.close()

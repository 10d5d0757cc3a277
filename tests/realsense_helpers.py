"""Synthetic RealSense recordings made with the real pyrealsense2 ``software_device``.

A software device with an RGB sensor and a stereo (depth) sensor, intrinsics,
extrinsics and a depth-units option like a D435's, is recorded with
``rs.recorder`` while frames are pushed into it at the stream rate.  The
driver then plays the file through the real ``rs.pipeline`` (which cannot take
a software device directly in librealsense 2.59), so the real syncer, ``rs.align``
and frame timestamps run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SERIAL = "123456789"
DEPTH_UNITS = 0.001


@dataclass
class Recording:
    path: Path
    frames: int
    timestamps_ms: list[float]


def _intrinsics(rs, w: int, h: int, hfov_px: float):
    i = rs.intrinsics()
    i.width, i.height = w, h
    i.ppx, i.ppy = w / 2, h / 2
    i.fx = i.fy = hfov_px  # same field of view for both sensors at their own resolution
    i.model = rs.distortion.none
    i.coeffs = [0.0] * 5
    return i


def _stream(rs, kind, uid: int, w: int, h: int, fps: int, fmt, bpp: int):
    vs = rs.video_stream()
    vs.type, vs.index, vs.uid = kind, 0, uid
    vs.width, vs.height, vs.fps, vs.bpp, vs.fmt = w, h, fps, bpp, fmt
    vs.intrinsics = _intrinsics(rs, w, h, w)
    return vs


def _frame(rs, profile, data: np.ndarray, bpp: int, n: int, ts_ms: float, domain):
    f = rs.software_video_frame()
    f.pixels = np.ascontiguousarray(data).tobytes()
    f.stride = data.shape[1] * bpp
    f.bpp = bpp
    f.timestamp = ts_ms
    f.domain = domain
    f.frame_number = n
    f.profile = profile.as_video_stream_profile()
    return f


def record(
    path: Path,
    *,
    frames: int,
    color: tuple[int, int] = (96, 64),
    depth: tuple[int, int] = (48, 32),
    fps: int = 30,
    domain: str = "global_time",
    timestamp_ms: Callable[[int], float] | None = None,
    color_image: Callable[[int, int, int], np.ndarray],
    depth_image: Callable[[int, int, int], np.ndarray],
) -> Recording:
    """Record ``frames`` colour+depth pairs (frame k = 1..frames) paced at ``fps``."""
    import pyrealsense2 as rs

    path = path.with_suffix(".db3")  # what the 2.59 recorder writes
    dev = rs.software_device()
    dev.register_info(rs.camera_info.serial_number, SERIAL)
    dev.register_info(rs.camera_info.name, "Synthetic D435")
    stereo = dev.add_sensor("Stereo Module")
    dprof = stereo.add_video_stream(_stream(rs, rs.stream.depth, 0, *depth, fps, rs.format.z16, 2))
    stereo.add_read_only_option(rs.option.depth_units, DEPTH_UNITS)
    rgb = dev.add_sensor("RGB Camera")
    cprof = rgb.add_video_stream(_stream(rs, rs.stream.color, 1, *color, fps, rs.format.rgb8, 3))
    ident = rs.extrinsics()
    ident.rotation = [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0]
    ident.translation = [0.0, 0.0, 0.0]
    dprof.register_extrinsics_to(cprof, ident)
    dev.create_matcher(rs.matchers.default)
    recorder = rs.recorder(str(path), dev)
    sink = rs.syncer()
    stereo.open(dprof)
    rgb.open(cprof)
    stereo.start(sink)
    rgb.start(sink)
    dom = getattr(rs.timestamp_domain, domain)
    start_ms = time.time() * 1000
    stamp = timestamp_ms or (lambda k: start_ms + k * 1000 / fps)
    stamps = []
    t0 = time.monotonic()
    for k in range(1, frames + 1):
        ts = stamp(k)
        stamps.append(ts)
        rgb.on_video_frame(_frame(rs, cprof, color_image(k, *color), 3, k, ts, dom))
        stereo.on_video_frame(_frame(rs, dprof, depth_image(k, *depth), 2, k, ts, dom))
        time.sleep(max(0.0, t0 + k / fps - time.monotonic()))
    for s in (stereo, rgb):
        s.stop()
        s.close()
    recorder.pause()
    del recorder  # closes the file
    return Recording(path=path, frames=frames, timestamps_ms=stamps)


def color_with_index(k: int, w: int, h: int) -> np.ndarray:
    """R = frame number, G = 100, B = 200: order and frame identity are both visible."""
    img = np.empty((h, w, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = k, 100, 200
    return img


def depth_near_and_far(k: int, w: int, h: int) -> np.ndarray:
    """Left half at (1000 + k) mm, right half at 6 m (beyond a 4 m max_depth_m)."""
    img = np.full((h, w), 6000, np.uint16)
    img[:, : w // 2] = 1000 + k
    return img

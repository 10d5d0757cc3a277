"""Intel RealSense RGB-D camera through pyrealsense2: colour, and depth aligned to it.

One device serves two sensors of the robot, read by two capture threads.  Both
must come from the same frameset, or the depth of one instant would be paired
with the colour of another; so this object owns the only pipeline, fetches a
frameset once for whichever reader asks first, and hands the other reader the
same frameset.  Depth is aligned to the colour camera (``rs.align``) so that a
depth pixel and a colour pixel with the same index see the same point.

RealSense timestamps are in milliseconds in a per-frame "domain".  GLOBAL_TIME
and SYSTEM_TIME are host wall-clock times and are moved onto the monotonic clock
with the wall-minus-monotonic offset measured when the frameset arrived;
HARDWARE_CLOCK is the camera's own counter, which no host clock can be derived
from, so the arrival time stands in for it.

A recording (``playback_file``, as the RealSense Viewer or ``rs.recorder``
writes it) can stand in for the USB device: the same pipeline, alignment and
timestamp handling then run on recorded frames.  The driver tests use it with
frames from ``rs.software_device``, which librealsense 2.59 cannot hand to a
pipeline directly (a software device added to a context is held there only
through a weak reference and vanishes at once).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from brain.config import CameraConfig, DepthConfig
from brain.hardware.lazy import REALSENSE_HINT, require
from brain.hardware.protocols import DepthFrame, Frame, HardwareUnavailable

log = logging.getLogger(__name__)

_DRIVER = "realsense"
# A wall-clock timestamp further than this from the arrival time is not to be
# trusted (a Pi without RTC steps its wall clock when NTP first syncs).
_MAX_PLAUSIBLE_AGE_S = 1.0


def _module() -> Any:
    return require("pyrealsense2", driver=_DRIVER, install_hint=REALSENSE_HINT)


def list_devices() -> list[dict[str, Any]]:
    """Connected RealSense devices: name, serial (for the config), firmware, USB type."""
    rs = _module()
    fields = (
        ("name", "name"),
        ("serial", "serial_number"),
        ("firmware", "firmware_version"),
        ("usb_type", "usb_type_descriptor"),
        ("product_line", "product_line"),
    )
    out = []
    for dev in rs.context().query_devices():
        info: dict[str, Any] = {}
        for key, attr in fields:
            ci = getattr(rs.camera_info, attr, None)
            if ci is not None and dev.supports(ci):
                info[key] = dev.get_info(ci)
        out.append(info)
    return out


def pick_rate(wanted: float, offered: set[int] | list[int]) -> float:
    """The offered rate to use: the wanted one, else the slowest faster one, else the fastest."""
    rates = sorted(set(offered))
    if not rates:
        return wanted
    for r in rates:
        if abs(r - wanted) < 0.5:
            return float(r)
    faster = [r for r in rates if r > wanted]
    return float(faster[0] if faster else rates[-1])


@dataclass(frozen=True, slots=True)
class _Frameset:
    index: int
    color: np.ndarray
    t_color: float
    depth: np.ndarray | None
    t_depth: float


class RealSenseCamera:
    """A RealSense colour camera (``Camera``) that is also its aligned ``DepthCamera``."""

    def __init__(
        self,
        color_cfg: CameraConfig,
        depth_cfg: DepthConfig | None = None,
        *,
        playback_file: str | Path | None = None,
    ):
        self._rs = _module()
        self._playback_file = None if playback_file is None else Path(playback_file)
        self.cfg = color_cfg
        # Depth is aligned to colour, so both streams share the colour geometry.
        self.width = color_cfg.width
        self.height = color_cfg.height
        self.fps = float(color_cfg.fps)
        self.depth_cfg: DepthConfig | None = None
        self._depth_fps = self.fps
        self.depth_scale = 0.001
        self.serial = color_cfg.serial
        self._pipeline: Any = None
        self._align: Any = None
        self._cond = threading.Condition()
        self._latest: _Frameset | None = None
        self._fetching = False
        self._count = 0
        self._last_seen = {"color": 0, "depth": 0}
        if depth_cfg is not None:
            self.enable_depth(depth_cfg)

    def enable_depth(self, depth_cfg: DepthConfig) -> None:
        """Add the depth stream (before ``start``), so one object serves both sensors."""
        if self._pipeline is not None:
            raise RuntimeError("RealSenseCamera.enable_depth must come before start()")
        if depth_cfg.serial and self.serial and depth_cfg.serial != self.serial:
            raise ValueError(
                f"depth serial {depth_cfg.serial!r} differs from camera serial {self.serial!r}: "
                "depth is aligned to the colour stream of the same device"
            )
        self.serial = self.serial or depth_cfg.serial
        self.depth_cfg = depth_cfg
        self._depth_fps = float(depth_cfg.fps)

    def _match_rate(self) -> None:
        """Ask for a frame rate the device offers at this resolution, as near the wanted one.

        RealSense modes come in fixed rates (6, 15, 30, 60, 90 fps), so a 50 Hz control
        rate has no exact match; a faster mode is better than a slower one (a tick then
        takes the newest frame, see brain.control.trigger).  Without a device list to
        ask, the configured rate goes to the pipeline as before.
        """
        rs = self._rs
        try:
            offered = set(
                self._offered_rates(rs.stream.color, rs.format.rgb8, self.width, self.height)
            )
            d = self.depth_cfg
            if d is not None:
                offered &= set(
                    self._offered_rates(rs.stream.depth, rs.format.z16, d.width, d.height)
                )
        except Exception as exc:  # an odd device or SDK: let the pipeline judge the request
            log.debug("RealSense frame rates not listed: %s", exc)
            return
        if not offered:  # no such device or mode: the pipeline's error will say so
            return
        rate = pick_rate(self.fps, offered)
        if rate != self.fps:
            log.warning(
                "RealSense offers no %g fps mode at %dx%d; using %g fps",
                self.fps,
                self.width,
                self.height,
                rate,
            )
        self.fps = rate
        self._depth_fps = rate

    def _offered_rates(self, stream: Any, fmt: Any, width: int, height: int) -> list[int]:
        rates: list[int] = []
        for dev in self._rs.context().query_devices():
            serial = dev.get_info(self._rs.camera_info.serial_number)
            if self.serial and serial != self.serial:
                continue
            for sensor in dev.query_sensors():
                for p in sensor.get_stream_profiles():
                    if p.stream_type() != stream or p.format() != fmt:
                        continue
                    v = p.as_video_stream_profile()
                    if (v.width(), v.height()) == (width, height):
                        rates.append(int(p.fps()))
            break  # the pipeline takes the first matching device too
        return rates

    @property
    def has_depth(self) -> bool:
        return self.depth_cfg is not None

    def start(self) -> None:
        """Start the pipeline; calling it again (as camera and as depth) is harmless."""
        if self._pipeline is not None:
            return
        rs = self._rs
        pipeline = rs.pipeline()
        config = rs.config()
        if self._playback_file is not None:
            config.enable_device_from_file(str(self._playback_file), False)  # play once
        if self.serial:
            config.enable_device(self.serial)
        d = self.depth_cfg
        if self._playback_file is None:
            self._match_rate()
        config.enable_stream(
            rs.stream.color, self.width, self.height, rs.format.rgb8, round(self.fps)
        )
        if d is not None:
            config.enable_stream(
                rs.stream.depth, d.width, d.height, rs.format.z16, round(self._depth_fps)
            )
        try:
            profile = pipeline.start(config)
        except RuntimeError as exc:
            raise HardwareUnavailable(
                f"{_DRIVER} driver: cannot start the RealSense pipeline "
                + (f"on {self._playback_file} " if self._playback_file else "")
                + f"(serial {self.serial or 'any'}, colour {self.width}x{self.height}@{self.fps:g}"
                + (f", depth {d.width}x{d.height}@{self._depth_fps:g}" if d else "")
                + f"): {exc}. Check the USB 3 cable and `rs-enumerate-devices`"
            ) from exc
        if d is not None:
            try:
                sensor = profile.get_device().first_depth_sensor()
                self.depth_scale = float(sensor.get_depth_scale())
            except Exception:
                pipeline.stop()
                raise
            self._align = rs.align(rs.stream.color)
        with self._cond:
            self._pipeline = pipeline
            self._latest = None

    def read(self, timeout: float = 1.0) -> Frame:
        fs = self._next("color", timeout, need_depth=False)
        return Frame(data=fs.color, t_capture=fs.t_color, seq=fs.index, sensor="camera")

    def read_depth(self, timeout: float = 1.0) -> DepthFrame:
        if self.depth_cfg is None:
            raise RuntimeError("RealSenseCamera.read_depth without a depth stream (enable_depth)")
        fs = self._next("depth", timeout, need_depth=True)
        assert fs.depth is not None
        return DepthFrame(
            data=fs.depth,
            t_capture=fs.t_depth,
            seq=fs.index,
            depth_scale=self.depth_scale,
            sensor="depth",
        )

    def close(self) -> None:
        with self._cond:
            pipeline, self._pipeline = self._pipeline, None
            self._align = None
            self._cond.notify_all()
        if pipeline is not None:
            try:
                pipeline.stop()
            except RuntimeError as exc:
                log.warning("RealSense pipeline stop failed: %s", exc)

    # -------------------------------------------------------------------------- internals

    def _next(self, reader: str, timeout: float, *, need_depth: bool) -> _Frameset:
        """A frameset newer than the last one ``reader`` got; fetched once for both readers."""
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                while True:
                    latest = self._latest
                    if latest is not None and latest.index > self._last_seen[reader]:
                        self._last_seen[reader] = latest.index
                        if need_depth and latest.depth is None:
                            break  # this frameset lacks depth: fetch another
                        return latest
                    if self._pipeline is None:
                        raise RuntimeError("RealSenseCamera is not started (or was closed)")
                    if not self._fetching:
                        break
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError(f"RealSense: no frameset within {timeout:g} s")
                    self._cond.wait(remaining)
                if self._fetching:
                    continue
                self._fetching = True
                pipeline, align = self._pipeline, self._align
            remaining = deadline - time.monotonic()
            fetched = None
            try:
                if remaining <= 0:
                    raise TimeoutError(f"RealSense: no frameset within {timeout:g} s")
                fetched = self._fetch(pipeline, align, remaining)
            finally:
                with self._cond:
                    self._fetching = False
                    if fetched is not None:
                        self._count += 1
                        self._latest = _Frameset(self._count, *fetched)
                    self._cond.notify_all()

    def _fetch(
        self, pipeline: Any, align: Any, timeout: float
    ) -> tuple[np.ndarray, float, np.ndarray | None, float]:
        try:
            frames = pipeline.wait_for_frames(max(1, round(timeout * 1000)))
        except RuntimeError as exc:
            raise TimeoutError(f"RealSense: no frameset within {timeout:.3g} s ({exc})") from exc
        arrival = time.monotonic()
        wall_offset = time.time() - arrival
        if align is not None:
            frames = align.process(frames)
        color = frames.get_color_frame()
        if not color:
            raise TimeoutError("RealSense: frameset without a colour frame")
        color_arr = np.array(color.get_data(), dtype=np.uint8, copy=True)
        t_color = self._monotonic_time(color, arrival, wall_offset)
        depth_arr: np.ndarray | None = None
        t_depth = arrival
        if align is not None:
            depth = frames.get_depth_frame()
            if depth:
                depth_arr = np.array(depth.get_data(), dtype=np.uint16, copy=True)
                d = self.depth_cfg
                if d is not None and self.depth_scale > 0:
                    # Beyond the configured range depth is too noisy to use: mark it "no depth".
                    depth_arr[depth_arr > d.max_depth_m / self.depth_scale] = 0
                t_depth = self._monotonic_time(depth, arrival, wall_offset)
        return color_arr, t_color, depth_arr, t_depth

    def _monotonic_time(self, frame: Any, arrival: float, wall_offset: float) -> float:
        domain = frame.get_frame_timestamp_domain()
        td = self._rs.timestamp_domain
        if domain not in (td.global_time, td.system_time):
            return arrival
        t = float(frame.get_timestamp()) / 1000.0 - wall_offset
        if not math.isfinite(t) or abs(arrival - t) > _MAX_PLAUSIBLE_AGE_S:
            return arrival
        return min(t, arrival)

"""Raspberry Pi camera through picamera2 (libcamera).

Two picamera2 facts shape this driver.  Its "RGB888" format is named after
libcamera's DRM fourcc, which stores pixels as B, G, R in memory, so the array
is channel-reversed here to give the RGB that ``Frame`` promises.  And the
request metadata's ``SensorTimestamp`` (ns) is on the same clock as
``time.monotonic()`` (picamera2 itself compares it with ``time.monotonic_ns()``),
which makes it the right capture time: it is when the sensor read the frame
out, not when our thread happened to get it.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np

from brain.config import CameraConfig
from brain.hardware.lazy import PICAMERA2_HINT, require
from brain.hardware.protocols import Frame, HardwareUnavailable

log = logging.getLogger(__name__)

_DRIVER = "picamera2"
# A sensor timestamp further than this from "now" is on some other clock (e.g.
# CLOCK_BOOTTIME after a suspend); the arrival time is then the better guess.
_MAX_PLAUSIBLE_AGE_S = 1.0


def _module() -> Any:
    return require("picamera2", driver=_DRIVER, install_hint=PICAMERA2_HINT)


def list_cameras() -> list[dict[str, Any]]:
    """The cameras libcamera sees, with lower-cased keys and their ``index`` for the config."""
    infos = _module().Picamera2.global_camera_info()
    return [
        {"index": i, **{str(k).lower(): v for k, v in dict(info).items()}}
        for i, info in enumerate(infos)
    ]


class Picamera2Camera:
    """One Pi camera, delivering RGB frames stamped with the sensor's capture time."""

    def __init__(self, cfg: CameraConfig):
        self.cfg = cfg
        self.width = cfg.width
        self.height = cfg.height
        self.fps = float(cfg.fps)
        self._mod = _module()
        self._cam: Any = None
        self._seq = 0
        self._warned_shape = False

    def start(self) -> None:
        if self._cam is not None:
            return
        Picamera2 = self._mod.Picamera2
        cameras = Picamera2.global_camera_info()
        if self.cfg.index >= len(cameras):
            raise HardwareUnavailable(
                f"{_DRIVER} driver: no camera at index {self.cfg.index} "
                f"({len(cameras)} found); check the ribbon cable and `rpicam-hello --list-cameras`"
            )
        try:
            cam = Picamera2(camera_num=self.cfg.index)
        except (RuntimeError, OSError, IndexError) as exc:
            raise HardwareUnavailable(
                f"{_DRIVER} driver: cannot open camera {self.cfg.index} ({exc}); "
                "is another process using it?"
            ) from exc
        try:
            frame_us = round(1e6 / self.fps)
            config = cam.create_video_configuration(
                main={"size": (self.width, self.height), "format": "RGB888"},
                controls={"FrameDurationLimits": (frame_us, frame_us)},
            )
            cam.configure(config)
            cam.start()
        except Exception:
            cam.close()
            raise
        self._cam = cam

    def read(self, timeout: float = 1.0) -> Frame:
        cam = self._cam
        if cam is None:
            raise RuntimeError("Picamera2Camera.read before start()")
        # A number for `wait` is a timeout in recent picamera2 (TimeoutError);
        # older releases take it as "wait" and block.
        request = cam.capture_request(wait=timeout)
        try:
            array = request.make_array("main")
            metadata = request.get_metadata() or {}
            # BGR(X) in memory -> RGB, copied out of the camera's buffer before it is reused.
            rgb = np.ascontiguousarray(array[..., 2::-1])
        finally:
            request.release()
        now = time.monotonic()
        t_capture = now
        ts_ns = metadata.get("SensorTimestamp")
        if isinstance(ts_ns, int | float) and math.isfinite(ts_ns) and ts_ns > 0:
            t_sensor = ts_ns / 1e9
            if abs(now - t_sensor) <= _MAX_PLAUSIBLE_AGE_S:
                t_capture = min(t_sensor, now)
            else:
                log.debug("SensorTimestamp %.3f s is not near monotonic now %.3f s", t_sensor, now)
        if rgb.shape[:2] != (self.height, self.width) and not self._warned_shape:
            self._warned_shape = True
            log.warning(
                "picamera2 delivers %dx%d frames, configured %dx%d",
                rgb.shape[1],
                rgb.shape[0],
                self.width,
                self.height,
            )
        seq, self._seq = self._seq, self._seq + 1
        return Frame(data=rgb, t_capture=t_capture, seq=seq, sensor="camera")

    def close(self) -> None:
        cam, self._cam = self._cam, None
        if cam is None:
            return
        for step in (cam.stop, cam.close):
            try:
                step()
            except Exception as exc:  # a half-dead camera must still be let go of
                log.warning("picamera2 %s failed: %s", step.__name__, exc)

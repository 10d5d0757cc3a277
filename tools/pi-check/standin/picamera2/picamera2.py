"""The Picamera2 class, reduced to what the robot's driver calls (see __init__)."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

from .request import CompletedRequest

# What libcamera reports for a Camera Module 3 on a Pi 5 (rpicam-hello --list-cameras).
_CAMERAS = [
    {
        "Model": "imx708",
        "Location": 2,
        "Rotation": 180,
        "Id": "/base/axi/pcie@120000/rp1/i2c@88000/imx708@1a",
    }
]
_in_use: set[int] = set()
_lock = threading.Lock()


class Picamera2:
    @staticmethod
    def global_camera_info() -> list[dict[str, Any]]:
        return [dict(c) for c in _CAMERAS]

    def __init__(self, camera_num: int = 0) -> None:
        if camera_num >= len(_CAMERAS):
            raise IndexError("list index out of range")
        with _lock:
            if camera_num in _in_use:
                raise RuntimeError("Failed to acquire camera: Device or resource busy")
            _in_use.add(camera_num)
        self.camera_num = camera_num
        self._config: dict[str, Any] | None = None
        self._started = False
        self._next_t = 0.0
        self._seq = 0

    def create_video_configuration(
        self, main: dict[str, Any] | None = None, controls: dict[str, Any] | None = None, **_: Any
    ) -> dict[str, Any]:
        main = {"size": (640, 480), "format": "XBGR8888", **(main or {})}
        return {"main": main, "controls": dict(controls or {})}

    def configure(self, config: dict[str, Any]) -> None:
        if self._started:
            raise RuntimeError("Camera must be stopped before configuring")
        fmt = config["main"]["format"]
        if fmt not in ("RGB888", "BGR888"):
            raise ValueError(f"stand-in supports RGB888/BGR888, not {fmt}")
        self._config = config

    def start(self) -> None:
        if self._config is None:
            raise RuntimeError("Camera has not been configured")
        self._started = True
        self._next_t = time.monotonic()

    def _frame_s(self) -> float:
        limits = self._config["controls"].get("FrameDurationLimits") if self._config else None
        return (limits[0] if limits else 33333) / 1e6

    def capture_request(self, wait: Any = None) -> CompletedRequest:
        if not self._started:
            raise RuntimeError("Camera not started")
        # Frames arrive at the configured frame duration, like the sensor's.
        delay = self._next_t - time.monotonic()
        if isinstance(wait, int | float) and delay > wait:
            raise TimeoutError("no frame within the timeout")
        if delay > 0:
            time.sleep(delay)
        t_sensor = time.monotonic_ns()
        self._next_t = max(self._next_t + self._frame_s(), time.monotonic())
        w, h = self._config["main"]["size"]
        y = np.arange(h, dtype=np.uint16)[:, None]
        x = np.arange(w, dtype=np.uint16)[None, :]
        bgr = np.empty((h, w, 3), np.uint8)
        bgr[..., 0] = (x + self._seq) % 256  # B
        bgr[..., 1] = y % 256  # G
        bgr[..., 2] = 200  # R
        self._seq += 1
        return CompletedRequest(
            bgr, {"SensorTimestamp": t_sensor, "FrameDuration": round(self._frame_s() * 1e6)}
        )

    def stop(self) -> None:
        self._started = False

    def close(self) -> None:
        self._started = False
        with _lock:
            _in_use.discard(self.camera_num)

"""Stand-ins for the hardware libraries, installed into ``sys.modules`` by tests.

Only picamera2 (and the libcamera behind it) is faked: it comes from Raspberry
Pi OS's apt archive and cannot be installed here.  The fake covers the library
surface our driver uses and records every call, so tests exercise the real
driver code and assert on what would have reached the hardware.  pyrealsense2
and the Adafruit PCA9685 stack are never faked: their tests run the real
libraries (tests/test_realsense_real.py, tests/pca9685_bus.py).
"""

from __future__ import annotations

import types
from typing import Any

import numpy as np

# ----------------------------------------------------------------------------- picamera2


class FakeRequest:
    def __init__(self, array: np.ndarray, metadata: dict[str, Any]) -> None:
        self.array, self.metadata = array, metadata
        self.released = False
        self.arrays_made: list[str] = []

    def make_array(self, name: str) -> np.ndarray:
        assert not self.released, "array taken from a released request"
        self.arrays_made.append(name)
        return self.array

    def get_metadata(self) -> dict[str, Any]:
        assert not self.released, "metadata taken from a released request"
        return dict(self.metadata)

    def release(self) -> None:
        self.released = True


class FakePicamera2Lib:
    """Queue (bgr_array, metadata) pairs in ``frames``; every call lands in ``calls``."""

    def __init__(self) -> None:
        self.cameras: list[dict[str, Any]] = [
            {"Model": "imx708", "Location": 2, "Rotation": 180, "Id": "/base/i2c@80000/imx708@1a"}
        ]
        self.frames: list[tuple[np.ndarray, dict[str, Any]]] = []
        self.calls: list[tuple[Any, ...]] = []
        self.requests: list[FakeRequest] = []

    def install(self, monkeypatch: Any) -> FakePicamera2Lib:
        lib = self

        class Picamera2:
            @staticmethod
            def global_camera_info() -> list[dict[str, Any]]:
                return [dict(c) for c in lib.cameras]

            def __init__(self, camera_num: int = 0) -> None:
                lib.calls.append(("open", camera_num))

            def create_video_configuration(self, main: Any = None, controls: Any = None, **kw: Any):
                lib.calls.append(("create_video_configuration", dict(main), dict(controls)))
                return {"main": dict(main), "controls": dict(controls)}

            def configure(self, config: Any) -> None:
                lib.calls.append(("configure", config))

            def start(self) -> None:
                lib.calls.append(("start",))

            def capture_request(self, wait: Any = None) -> FakeRequest:
                lib.calls.append(("capture_request", wait))
                if not lib.frames:
                    raise TimeoutError("fake camera: no frame queued")
                req = FakeRequest(*lib.frames.pop(0))
                lib.requests.append(req)
                return req

            def stop(self) -> None:
                lib.calls.append(("stop",))

            def close(self) -> None:
                lib.calls.append(("close",))

        mod = types.ModuleType("picamera2")
        mod.Picamera2 = Picamera2
        monkeypatch.setitem(__import__("sys").modules, "picamera2", mod)
        return self


# ----------------------------------------------------------------------------- pyrealsense2

"""Stand-ins for the hardware libraries, installed into ``sys.modules`` by tests.

They fake only the library surface our drivers use (adafruit_pca9685 + board +
busio + adafruit_extended_bus, picamera2, pyrealsense2) and record every call,
so tests exercise the real driver code and assert on what would have reached
the hardware: duty cycles per channel, released requests, the align step.
"""

from __future__ import annotations

import threading
import time
import types
from collections.abc import Callable
from typing import Any

import numpy as np

# ----------------------------------------------------------------------------- PCA9685


class FakePCALib:
    """The adafruit stack: one shared event log across every board opened."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.boards: list[FakePCA9685] = []
        self.absent_addresses: set[int] = set()
        self.failing_channels: set[int] = set()  # writes to these raise OSError (I2C error)

    def duties(self, board: int | None = None) -> list[tuple[int, int]]:
        """(channel, duty_cycle) writes in order, for one board or all."""
        return [
            (e[2], e[3]) for e in self.events if e[0] == "duty" and (board is None or e[1] == board)
        ]

    def install(self, monkeypatch: Any) -> FakePCALib:
        lib = self

        class PCA9685(FakePCA9685):
            def __init__(self, i2c: Any, *, address: int = 0x40, **kw: Any) -> None:
                super().__init__(lib, i2c, address)

        pca_mod = types.ModuleType("adafruit_pca9685")
        pca_mod.PCA9685 = PCA9685
        board = types.ModuleType("board")
        board.SCL = "SCL-pin"
        board.SDA = "SDA-pin"
        busio = types.ModuleType("busio")
        busio.I2C = lambda scl, sda: FakeI2C(lib, ("busio", scl, sda))
        ext = types.ModuleType("adafruit_extended_bus")
        ext.ExtendedI2C = lambda bus: FakeI2C(lib, ("extended", bus))
        for name, mod in (
            ("adafruit_pca9685", pca_mod),
            ("board", board),
            ("busio", busio),
            ("adafruit_extended_bus", ext),
        ):
            monkeypatch.setitem(__import__("sys").modules, name, mod)
        return self


class FakeI2C:
    def __init__(self, lib: FakePCALib, how: tuple[Any, ...]) -> None:
        self.lib, self.how, self.deinited = lib, how, False
        lib.events.append(("i2c", *how))

    def deinit(self) -> None:
        self.deinited = True
        self.lib.events.append(("i2c_deinit", *self.how))


class FakeChannel:
    def __init__(self, board: FakePCA9685, index: int) -> None:
        self._board, self._index, self._duty = board, index, 0

    @property
    def duty_cycle(self) -> int:
        return self._duty

    @duty_cycle.setter
    def duty_cycle(self, value: int) -> None:
        if not isinstance(value, int) or not 0 <= value <= 0xFFFF:
            raise ValueError(f"duty_cycle must be an int in 0..0xFFFF, got {value!r}")
        if self._board.deinited:
            raise OSError("write to a deinitialised PCA9685")
        if self._index in self._board.lib.failing_channels:
            raise OSError(f"[Errno 121] Remote I/O error (channel {self._index})")
        self._duty = value
        self._board.lib.events.append(("duty", self._board.number, self._index, value))


class FakePCA9685:
    def __init__(self, lib: FakePCALib, i2c: FakeI2C, address: int) -> None:
        if address in lib.absent_addresses:
            raise ValueError(f"No I2C device at address: 0x{address:x}")
        self.lib, self.i2c, self.address = lib, i2c, address
        self.number = len(lib.boards)
        self.deinited = False
        self._frequency: float | None = None
        self.channels = [FakeChannel(self, i) for i in range(16)]
        lib.boards.append(self)
        lib.events.append(("open", self.number, address))

    @property
    def frequency(self) -> float | None:
        return self._frequency

    @frequency.setter
    def frequency(self, hz: float) -> None:
        self._frequency = hz
        self.lib.events.append(("frequency", self.number, hz))

    def deinit(self) -> None:
        self.deinited = True
        self.lib.events.append(("deinit", self.number))


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


class FakeRSFrame:
    def __init__(self, data: np.ndarray, timestamp_ms: float, domain: str, number: int) -> None:
        self.data, self.timestamp_ms, self.domain, self.number = data, timestamp_ms, domain, number

    def get_data(self) -> np.ndarray:
        return self.data

    def get_timestamp(self) -> float:
        return self.timestamp_ms

    def get_frame_timestamp_domain(self) -> str:
        return self.domain

    def get_frame_number(self) -> int:
        return self.number

    def __bool__(self) -> bool:
        return True


class FakeRSFrameset:
    def __init__(self, color: FakeRSFrame, depth: FakeRSFrame | None, aligned: bool = False):
        self.color, self.depth, self.aligned = color, depth, aligned

    def get_color_frame(self) -> FakeRSFrame:
        return self.color

    def get_depth_frame(self) -> FakeRSFrame | None:
        return self.depth


class FakeRealSenseLib:
    """``make_frameset(k)`` builds the k-th frameset (1-based) the pipeline delivers.

    The default one fills colour channel 0 with k and the raw depth (at the
    depth stream's own resolution) with k; the fake ``align`` turns it into a
    colour-sized depth of value 1000 + k, so a test can tell aligned from raw.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.depth_scale = 0.00025
        self.devices = [
            {
                "name": "Intel RealSense D435",
                "serial_number": "123456789",
                "firmware_version": "5.15",
            }
        ]
        self.fetches = 0
        self.fetch_delay_s = 0.0
        self.domain = "hardware_clock"
        self.timestamp_ms: Callable[[], float] = lambda: 12345.0
        self.color_shape = (480, 640, 3)
        self.depth_shape = (480, 848)
        self.fail_start: str | None = None
        self._lock = threading.Lock()

    def make_frameset(self, k: int) -> FakeRSFrameset:
        color = np.zeros(self.color_shape, np.uint8)
        color[..., 0] = k % 256
        depth = np.full(self.depth_shape, k, np.uint16)
        ts = self.timestamp_ms()
        return FakeRSFrameset(
            FakeRSFrame(color, ts, self.domain, k), FakeRSFrame(depth, ts, self.domain, k)
        )

    def install(self, monkeypatch: Any) -> FakeRealSenseLib:
        lib = self
        mod = types.ModuleType("pyrealsense2")
        mod.stream = types.SimpleNamespace(color="color", depth="depth")
        mod.format = types.SimpleNamespace(rgb8="rgb8", z16="z16", bgr8="bgr8")
        mod.timestamp_domain = types.SimpleNamespace(
            hardware_clock="hardware_clock", system_time="system_time", global_time="global_time"
        )
        mod.camera_info = types.SimpleNamespace(
            name="name",
            serial_number="serial_number",
            firmware_version="firmware_version",
            usb_type_descriptor="usb_type_descriptor",
            product_line="product_line",
        )

        class config:
            def __init__(self) -> None:
                self.streams: list[tuple[Any, ...]] = []

            def enable_device(self, serial: str) -> None:
                lib.calls.append(("enable_device", serial))

            def enable_stream(self, stream: str, w: int, h: int, fmt: str, fps: int) -> None:
                lib.calls.append(("enable_stream", stream, w, h, fmt, fps))

        class _Sensor:
            def get_depth_scale(self) -> float:
                return lib.depth_scale

        class _Device:
            def first_depth_sensor(self) -> _Sensor:
                return _Sensor()

        class _Profile:
            def get_device(self) -> _Device:
                return _Device()

        class pipeline:
            def start(self, cfg: config) -> _Profile:
                if lib.fail_start:
                    raise RuntimeError(lib.fail_start)
                lib.calls.append(("pipeline_start",))
                return _Profile()

            def wait_for_frames(self, timeout_ms: int = 5000) -> FakeRSFrameset:
                if lib.fetch_delay_s:
                    time.sleep(lib.fetch_delay_s)
                with lib._lock:
                    lib.fetches += 1
                    k = lib.fetches
                lib.calls.append(("wait_for_frames", timeout_ms))
                return lib.make_frameset(k)

            def stop(self) -> None:
                lib.calls.append(("pipeline_stop",))

        class align:
            def __init__(self, to: str) -> None:
                lib.calls.append(("align", to))

            def process(self, frames: FakeRSFrameset) -> FakeRSFrameset:
                lib.calls.append(("align_process",))
                d = frames.depth
                assert d is not None
                h, w = frames.color.data.shape[:2]
                aligned = np.full((h, w), 1000 + int(d.data.flat[0]), np.uint16)
                return FakeRSFrameset(
                    frames.color,
                    FakeRSFrame(aligned, d.timestamp_ms, d.domain, d.number),
                    aligned=True,
                )

        class _Dev:
            def __init__(self, info: dict[str, str]) -> None:
                self.info = info

            def supports(self, key: str) -> bool:
                return key in self.info

            def get_info(self, key: str) -> str:
                return self.info[key]

        class context:
            def query_devices(self) -> list[_Dev]:
                return [_Dev(d) for d in lib.devices]

        mod.config, mod.pipeline, mod.align, mod.context = config, pipeline, align, context
        monkeypatch.setitem(__import__("sys").modules, "pyrealsense2", mod)
        return self

"""Stand-ins for the hardware libraries, installed into ``sys.modules`` by tests.

They fake only the library surface our drivers use (adafruit_pca9685 + board +
busio + adafruit_extended_bus, picamera2) and record every call, so tests
exercise the real driver code and assert on what would have reached the
hardware: duty cycles per channel, released requests.  pyrealsense2 is never
faked (tests/test_realsense_real.py runs the real library), and the PCA9685
drivers also run on the real Adafruit library (tests/test_pca9685_real.py).
"""

from __future__ import annotations

import types
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

"""The real hardware drivers, run against fake driver libraries in ``sys.modules``.

The fakes stand exactly where picamera2, pyrealsense2 and the Adafruit stack
would be, so what is tested is our driver code: the duty cycles that would
reach the PCA9685, the order of writes around ESC arming, colour conversion,
timestamps and frameset sharing.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from brain.config import (
    ArmActuatorsConfig,
    CameraConfig,
    CarActuatorsConfig,
    Config,
    DepthConfig,
    JointConfig,
    PCA9685Config,
    SteeringConfig,
    ThrottleConfig,
)
from brain.hardware import factory
from brain.hardware.lazy import require
from brain.hardware.pca9685 import PCA9685Arm, PCA9685Car, PwmBoard, safe_stop
from brain.hardware.picamera2_camera import Picamera2Camera, list_cameras
from brain.hardware.protocols import (
    CAR_ACTION_SPEC,
    Actuators,
    HardwareUnavailable,
)
from brain.hardware.realsense_camera import RealSenseCamera, list_devices
from tests.fakes.fake_hw_libs import FakePicamera2Lib
from tests.pca9685_bus import PRE_SCALE, BlinkaStandIn, EmulatedPCA9685, prescale_for

REPO = Path(__file__).resolve().parent.parent
HW_LIBS = (
    "picamera2",
    "pyrealsense2",
    "adafruit_pca9685",
    "board",
    "busio",
    "adafruit_extended_bus",
)

# Duty cycles at 60 Hz (period 16666.67 us): round(us / period * 0xFFFF).
D60 = {1000: 3932, 1450: 5702, 1500: 5898, 1520: 5977, 1725: 6783, 1750: 6881, 2000: 7864}


@pytest.fixture
def pca(monkeypatch: pytest.MonkeyPatch) -> BlinkaStandIn:
    """The real adafruit_pca9685 on emulated buses with a chip at 0x40."""
    return BlinkaStandIn().install(monkeypatch)


@pytest.fixture
def picam(monkeypatch: pytest.MonkeyPatch) -> FakePicamera2Lib:
    return FakePicamera2Lib().install(monkeypatch)


def car_cfg(**kw) -> CarActuatorsConfig:
    return CarActuatorsConfig(
        driver="pca9685_car",
        pca9685=PCA9685Config(frequency_hz=60, address=kw.pop("address", 0x40)),
        steering=SteeringConfig(**kw.pop("steering", {})),
        throttle=ThrottleConfig(**{"arm_seconds": 2.0, **kw.pop("throttle", {})}),
    )


def started_car(cfg: CarActuatorsConfig, sleeps: list[float] | None = None) -> PCA9685Car:
    car = PCA9685Car(cfg, sleep=(sleeps.append if sleeps is not None else lambda s: None))
    car.start()
    return car


def arm_cfg(on_stop: str = "hold") -> ArmActuatorsConfig:
    return ArmActuatorsConfig(
        pca9685=PCA9685Config(frequency_hz=50),
        on_stop=on_stop,
        joints=[
            JointConfig(
                name="shoulder",
                channel=4,
                min_us=500,
                max_us=2500,
                min_deg=0,
                max_deg=180,
                limit_min_deg=20,
                limit_max_deg=160,
            ),
            JointConfig(name="elbow", channel=5, min_us=600, max_us=2400, min_deg=-90, max_deg=90),
        ],
    )


def d50(us: float) -> int:
    return round(us / 20000 * 0xFFFF)


# ----------------------------------------------------------------------------- lazy imports


def test_driver_modules_import_without_any_hardware_library() -> None:
    code = f"""
import importlib.abc, sys
BLOCKED = {HW_LIBS!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError("blocked " + name)
sys.meta_path.insert(0, Block())
import brain.hardware.lazy, brain.hardware.pca9685, brain.hardware.picamera2_camera
import brain.hardware.realsense_camera, brain.hardware.factory
from brain.hardware.protocols import HardwareUnavailable
from brain.config import CameraConfig
loaded = [m for m in BLOCKED if m in sys.modules]
assert not loaded, loaded
try:
    brain.hardware.factory.open_camera(CameraConfig(driver="picamera2"))
except HardwareUnavailable as exc:
    print("UNAVAILABLE", exc)
"""
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "UNAVAILABLE" in out.stdout and "'picamera2'" in out.stdout


@pytest.mark.parametrize(
    ("missing", "opener", "hint"),
    [
        (
            "picamera2",
            lambda: Picamera2Camera(CameraConfig(driver="picamera2")),
            "sudo apt install python3-picamera2",
        ),
        (
            "pyrealsense2",
            lambda: RealSenseCamera(CameraConfig(driver="realsense"), None),
            "pip install 'continuon-brain[realsense]'",
        ),
        ("adafruit_pca9685", lambda: PCA9685Car(car_cfg()), "raspi-config"),
        ("board", lambda: PCA9685Car(car_cfg()), "pip install 'continuon-brain[pi]'"),
        ("busio", lambda: PCA9685Arm(arm_cfg()), "pip install 'continuon-brain[pi]'"),
        ("picamera2", list_cameras, "--system-site-packages"),
        ("pyrealsense2", list_devices, "pyrealsense2"),
    ],
)
def test_missing_library_names_module_and_install_hint(
    monkeypatch: pytest.MonkeyPatch, pca: BlinkaStandIn, missing: str, opener, hint: str
) -> None:
    monkeypatch.setitem(sys.modules, missing, None)  # makes `import missing` fail
    with pytest.raises(HardwareUnavailable) as info:
        opener()
    msg = str(info.value)
    assert f"'{missing}'" in msg
    assert hint in msg


def test_require_returns_the_module_when_present() -> None:
    assert require("json", driver="x", install_hint="y") is sys.modules["json"]


def test_blinka_refusing_the_board_is_hardware_unavailable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Refusing:
        def find_spec(self, name, path, target=None):
            if name == "refusing_board_lib":
                raise NotImplementedError("Board not supported")
            return None

    monkeypatch.setattr(sys, "meta_path", [Refusing(), *sys.meta_path])
    with pytest.raises(HardwareUnavailable, match="Board not supported"):
        require("refusing_board_lib", driver="pca9685", install_hint="hint")


def test_a_dependency_missing_inside_the_library_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blinka's `board` on a Pi 5 without python3-libgpiod: name gpiod, not just `board`."""
    (tmp_path / "gpiod_needing_board.py").write_text("import gpiod_absent_here\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(HardwareUnavailable) as info:
        require("gpiod_needing_board", driver="pca9685", install_hint="apt install it")
    msg = str(info.value)
    assert "It needs the module 'gpiod_absent_here', which is missing" in msg
    assert "apt install it" in msg


def test_any_exception_at_import_becomes_hardware_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "abi_broken_lib.py").write_text(
        "raise ValueError('numpy.dtype size changed, may indicate binary incompatibility. "
        "Expected 96 from C header, got 88 from PyObject')\n"
    )
    (tmp_path / "plain_broken_lib.py").write_text("raise LookupError('no sensor table')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(HardwareUnavailable) as info:
        require("abi_broken_lib", driver="picamera2", install_hint="unused")
    msg = str(info.value)
    assert "ValueError: numpy.dtype size changed" in msg
    assert f"numpy in this environment is {np.__version__}" in msg
    assert ("pip install 'numpy<2'" in msg) == np.__version__.startswith("2.")
    with pytest.raises(HardwareUnavailable, match=r"LookupError: no sensor table.*the hint"):
        require("plain_broken_lib", driver="x", install_hint="the hint")


# ----------------------------------------------------------------------------- PWM board


def test_board_opens_bus_1_with_board_pins_and_sets_frequency(pca: BlinkaStandIn) -> None:
    pca.chips[0x41] = EmulatedPCA9685()
    board = PwmBoard.open(PCA9685Config(address=0x41, frequency_hz=60))
    ((how, bus),) = pca.buses
    assert how == ("busio", "SCL-pin", "SDA-pin")
    chip = pca.chip(0x41)
    assert chip.regs[PRE_SCALE] == prescale_for(60) and not chip.sleeping
    assert pca.chip(0x40).writes == []  # only the configured address was talked to
    assert board.set_pulse_us(3, 1500) == D60[1500]
    assert chip.counts(3) == D60[1500] >> 4
    assert board.set_pulse_us(3, 10**6) == 0xFFFF  # clamped, not a ValueError from the library
    assert chip.counts(3) == 4096  # full on
    assert board.set_pulse_us(3, -5) == 0
    assert chip.counts(3) == 0
    board.release(3)
    assert chip.channel_writes() == [(3, D60[1500] >> 4), (3, 4096), (3, 0), (3, 0)]
    board.close()
    board.close()
    assert bus.deinited and chip.regs[0] == 0x00  # the library's deinit resets MODE1 only
    with pytest.raises(RuntimeError):
        board.set_pulse_us(3, 1500)


def test_other_i2c_bus_uses_extended_bus(
    pca: BlinkaStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    PwmBoard.open(PCA9685Config(i2c_bus=3))
    assert pca.buses[0][0] == ("extended", 3)
    monkeypatch.setitem(sys.modules, "adafruit_extended_bus", None)
    with pytest.raises(HardwareUnavailable, match="adafruit_extended_bus"):
        PwmBoard.open(PCA9685Config(i2c_bus=3))


def test_absent_chip_is_hardware_unavailable_naming_address(pca: BlinkaStandIn) -> None:
    with pytest.raises(HardwareUnavailable, match=r"0x41.*i2cdetect -y 1"):
        PwmBoard.open(PCA9685Config(address=0x41))
    assert pca.buses[0][1].deinited


# ----------------------------------------------------------------------------- car


def test_car_steering_and_throttle_pulses(pca: BlinkaStandIn) -> None:
    car = started_car(car_cfg())
    chip = pca.chip()
    assert car.action_spec == CAR_ACTION_SPEC
    assert chip.regs[PRE_SCALE] == prescale_for(60)
    n = len(chip.channel_writes())
    for value, us in ((-1.0, 1000), (0.0, 1500), (1.0, 2000), (0.5, 1750)):
        car.write(np.array([value, 0.0]))
        assert chip.counts(0) == D60[us] >> 4
        assert car.last_pulses_us["steering"] == us
        car.write(np.array([0.0, value]))
        assert chip.counts(1) == D60[us] >> 4
        assert car.last_pulses_us["throttle"] == us
    assert len(chip.channel_writes()) == n + 16


def test_car_inverted_and_asymmetric_calibration(pca: BlinkaStandIn) -> None:
    cfg = car_cfg(
        steering={"left_us": 2000, "center_us": 1450, "right_us": 1000},
        throttle={"reverse_us": 2000, "neutral_us": 1500, "forward_us": 1000},
    )
    car = started_car(cfg)
    chip = pca.chip()
    assert [car.steering_us(v) for v in (-1, -0.5, 0, 0.5, 1)] == [2000, 1725, 1450, 1225, 1000]
    assert [car.throttle_us(v) for v in (-1, 0, 1)] == [2000, 1500, 1000]
    car.write(np.array([-1.0, 1.0]))
    assert (chip.counts(0), chip.counts(1)) == (D60[2000] >> 4, D60[1000] >> 4)
    car.write(np.array([-0.5, 0.0]))
    assert (chip.counts(0), chip.counts(1)) == (D60[1725] >> 4, D60[1500] >> 4)


def test_esc_is_armed_with_neutral_before_any_motion(pca: BlinkaStandIn) -> None:
    sleeps: list[float] = []
    writes_when_sleeping: list[list[tuple[int, int]]] = []
    chip = pca.chip()

    def sleep(s: float) -> None:
        sleeps.append(s)
        writes_when_sleeping.append(chip.channel_writes())

    car = PCA9685Car(car_cfg(steering={"channel": 5}, throttle={"channel": 9}), sleep=sleep)
    with pytest.raises(RuntimeError):
        car.write(np.array([0.0, 0.5]))  # not started: nothing may reach the ESC
    assert chip.writes == []
    car.start()
    assert sleeps == [2.0]
    # Before the arming wait: throttle neutral, steering center, nothing else.
    assert writes_when_sleeping == [[(9, D60[1500] >> 4), (5, D60[1500] >> 4)]]
    car.write(np.array([0.0, 0.5]))
    assert chip.channel_writes()[-1] == (9, D60[1750] >> 4)
    car.start()  # already armed: no second wait
    assert sleeps == [2.0]


def test_arming_really_waits_with_default_sleep(pca: BlinkaStandIn) -> None:
    car = PCA9685Car(car_cfg(throttle={"arm_seconds": 0.2}))
    t0 = time.monotonic()
    car.start()
    assert time.monotonic() - t0 >= 0.19


@pytest.mark.parametrize("bad", [[math.nan, 0.5], [0.2, math.nan], [0.0, math.inf]])
def test_car_non_finite_action_writes_neutral(pca: BlinkaStandIn, bad: list[float]) -> None:
    car = started_car(car_cfg())
    car.write(np.array([1.0, 1.0]))
    car.write(np.array(bad))
    assert pca.chip().counts(0) == pca.chip().counts(1) == D60[1500] >> 4
    assert car.last_pulses_us == {"steering": 1500, "throttle": 1500}


def test_car_out_of_range_is_clamped(pca: BlinkaStandIn) -> None:
    car = started_car(car_cfg())
    car.write(np.array([5.0, -7.0]))
    assert car.last_pulses_us == {"steering": 2000, "throttle": 1000}
    assert (pca.chip().counts(0), pca.chip().counts(1)) == (D60[2000] >> 4, D60[1000] >> 4)
    with pytest.raises(ValueError):
        car.write(np.array([0.0, 0.0, 0.0]))


def test_car_neutral_before_start_idempotent_and_after_close(pca: BlinkaStandIn) -> None:
    chip = pca.chip()
    car = PCA9685Car(car_cfg(), sleep=lambda s: None)
    car.neutral()  # never opened: nothing to do, no error
    car.close()
    assert pca.buses == [] and chip.writes == []
    car.start()
    car.write(np.array([1.0, 1.0]))
    n = len(chip.channel_writes())
    car.neutral()
    car.neutral()
    neutral = [(1, D60[1500] >> 4), (0, D60[1500] >> 4)]
    assert chip.channel_writes()[n:] == neutral * 2
    car.write(np.array([1.0, 1.0]))
    car.close()
    assert chip.channel_writes()[-2:] == neutral
    assert pca.buses[0][1].deinited and not chip.sleeping  # neutral keeps running
    writes = len(chip.writes)
    car.neutral()
    car.close()
    assert len(chip.writes) == writes


def test_car_neutral_tries_every_channel_after_an_i2c_error(pca: BlinkaStandIn) -> None:
    chip = pca.chip()
    car = started_car(car_cfg())
    car.write(np.array([1.0, 1.0]))
    chip.fail_channels.add(1)
    with pytest.raises(OSError):
        car.write(np.array([0.5, 0.5]))
    with pytest.raises(OSError):
        car.neutral()  # throttle unreachable: reported, but steering was still centred
    assert chip.counts(0) == D60[1500] >> 4
    chip.fail_channels.clear()
    car.neutral()
    assert chip.counts(1) == D60[1500] >> 4
    chip.fail_channels.add(0)
    with pytest.raises(OSError):
        car.close()
    assert pca.buses[0][1].deinited  # closed even though neutral failed
    car.neutral()  # closed: no error


# ----------------------------------------------------------------------------- arm


def test_arm_action_spec_from_joints(pca: BlinkaStandIn) -> None:
    arm = PCA9685Arm(arm_cfg())
    spec = arm.action_spec
    assert spec.names == ("shoulder", "elbow")
    assert spec.low == (20, -90) and spec.high == (160, 90)
    assert all(math.isnan(v) for v in spec.neutral)
    assert spec.units == ("deg", "deg")


def test_arm_degrees_to_pulses_with_soft_limits(pca: BlinkaStandIn) -> None:
    chip = pca.chip()
    arm = PCA9685Arm(arm_cfg())
    arm.start()
    assert chip.channel_writes() == []  # opening an arm moves nothing
    arm.write(np.array([90.0, 0.0]))
    assert chip.counts(4) == chip.counts(5) == d50(1500) >> 4
    arm.write(np.array([10.0, 200.0]))  # shoulder below its soft limit 20, elbow past 90
    assert arm.last_pulses_us == {"shoulder": 722, "elbow": 2400}
    assert chip.counts(4) == d50(722) >> 4 == 2366 >> 4
    assert chip.counts(5) == d50(2400) >> 4 == 7864 >> 4
    arm.write(np.array([170.0, -45.0]))
    assert arm.last_pulses_us == {"shoulder": 2278, "elbow": 1050}
    n = len(chip.channel_writes())
    arm.write(np.array([math.nan, -90.0]))  # NaN joint: held, not written
    assert chip.channel_writes()[n:] == [(5, d50(600) >> 4)]
    assert arm.last_pulses_us["shoulder"] == 2278


def test_arm_neutral_hold_rewrites_last_commanded(pca: BlinkaStandIn) -> None:
    chip = pca.chip()
    arm = PCA9685Arm(arm_cfg("hold"))
    arm.neutral()
    arm.start()
    arm.neutral()
    assert chip.channel_writes() == []  # never commanded: nothing to hold
    arm.write(np.array([math.nan, 45.0]))
    arm.neutral()
    assert chip.channel_writes() == [(5, d50(1950) >> 4)] * 2
    arm.close()
    assert pca.buses[0][1].deinited and chip.counts(5) == d50(1950) >> 4
    arm.neutral()


def test_arm_neutral_release_stops_pulses(pca: BlinkaStandIn) -> None:
    chip = pca.chip()
    arm = PCA9685Arm(arm_cfg("release"))
    arm.start()
    arm.write(np.array([90.0, 0.0]))
    arm.neutral()
    assert chip.channel_writes()[-2:] == [(4, 0), (5, 0)]
    assert chip.pulse_us(4) is None and chip.pulse_us(5) is None  # full off: no pulse at all
    assert arm.last_pulses_us == {"shoulder": 0, "elbow": 0}
    arm.neutral()
    arm.close()
    assert chip.channel_writes()[-2:] == [(4, 0), (5, 0)]
    assert pca.buses[0][1].deinited


# ----------------------------------------------------------------------------- safe stop


def test_safe_stop_car_writes_neutral_on_a_fresh_board(
    pca: BlinkaStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    pca.chips[0x42] = chip = EmulatedPCA9685()
    act = car_cfg(
        address=0x42,
        steering={"channel": 3, "center_us": 1520},
        throttle={"channel": 7, "arm_seconds": 10},
    )
    car = started_car(act)
    car.write(np.array([1.0, 1.0]))  # the "daemon" dies while driving
    n = len(chip.channel_writes())
    monkeypatch.setattr(time, "sleep", lambda s: pytest.fail("safe_stop must not wait"))
    import adafruit_pca9685

    monkeypatch.setattr(adafruit_pca9685.time, "sleep", lambda s: None)  # its 5 ms wake-up
    lines = safe_stop(Config(hardware={"camera": None, "actuators": act}))
    assert len(pca.buses) == 2  # a new bus and board, no daemon state
    assert chip.regs[PRE_SCALE] == prescale_for(60)
    assert chip.channel_writes()[n:] == [(7, D60[1500] >> 4), (3, D60[1520] >> 4)]
    assert pca.buses[1][1].deinited
    assert any("throttle channel 7" in ln and "1500" in ln for ln in lines)
    assert any("steering channel 3" in ln and "1520" in ln for ln in lines)


def test_safe_stop_arm_release_and_hold(pca: BlinkaStandIn) -> None:
    def cfg(on_stop: str) -> Config:
        return Config(
            robot={"kind": "arm"}, hardware={"camera": None, "actuators": arm_cfg(on_stop)}
        )

    chip = pca.chip()
    lines = safe_stop(cfg("release"))
    assert chip.channel_writes() == [(4, 0), (5, 0)]
    assert pca.buses[0][1].deinited
    assert len(lines) == 2 and "shoulder" in lines[0]
    lines = safe_stop(cfg("hold"))
    assert len(pca.buses) == 1  # hold: the board is not even opened
    assert "hold" in lines[0]


def test_safe_stop_sim_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in HW_LIBS:
        monkeypatch.setitem(sys.modules, name, None)
    lines = safe_stop(Config())
    assert len(lines) == 1 and "sim" in lines[0]


# ----------------------------------------------------------------------------- picamera2


def test_picamera2_configures_and_converts_bgr_to_rgb(picam: FakePicamera2Lib) -> None:
    cam = Picamera2Camera(CameraConfig(driver="picamera2", width=64, height=48, fps=30))
    cam.start()
    assert picam.calls[:4] == [
        ("open", 0),
        (
            "create_video_configuration",
            {"size": (64, 48), "format": "RGB888"},
            {"FrameDurationLimits": (33333, 33333)},
        ),
        ("configure", picam.calls[2][1]),
        ("start",),
    ]
    bgr = np.zeros((48, 64, 3), np.uint8)
    bgr[..., 0], bgr[..., 1], bgr[..., 2] = 10, 20, 30  # B, G, R in memory
    t_sensor = time.monotonic() - 0.015
    picam.frames.append((bgr, {"SensorTimestamp": int(t_sensor * 1e9), "ExposureTime": 5000}))
    frame = cam.read(timeout=0.5)
    assert frame.data.shape == (48, 64, 3) and frame.data.dtype == np.uint8
    assert tuple(frame.data[0, 0]) == (30, 20, 10)
    assert frame.data.flags["C_CONTIGUOUS"]
    assert frame.t_capture == pytest.approx(t_sensor, abs=1e-6)
    assert picam.requests[0].released and picam.requests[0].arrays_made == ["main"]
    assert ("capture_request", 0.5) in picam.calls
    cam.close()
    cam.close()
    assert picam.calls[-2:] == [("stop",), ("close",)]


def test_picamera2_timestamp_fallback_and_seq(picam: FakePicamera2Lib) -> None:
    cam = Picamera2Camera(CameraConfig(driver="picamera2", width=32, height=32))
    cam.start()
    img = np.zeros((32, 32, 3), np.uint8)
    picam.frames.append((img, {}))  # no SensorTimestamp
    picam.frames.append((img, {"SensorTimestamp": int((time.monotonic() + 3600) * 1e9)}))
    before = time.monotonic()
    f1, f2 = cam.read(), cam.read()
    after = time.monotonic()
    assert before <= f1.t_capture <= after
    assert before <= f2.t_capture <= after  # an hour off: another clock, not trusted
    assert f2.seq == f1.seq + 1
    assert all(r.released for r in picam.requests)
    with pytest.raises(TimeoutError):
        cam.read()


def test_picamera2_releases_request_when_array_fails(picam: FakePicamera2Lib) -> None:
    cam = Picamera2Camera(CameraConfig(driver="picamera2"))
    cam.start()
    picam.frames.append((None, {}))  # type: ignore[arg-type]  # slicing None fails
    with pytest.raises(TypeError):
        cam.read()
    assert picam.requests[0].released


def test_picamera2_missing_camera_and_listing(picam: FakePicamera2Lib) -> None:
    assert list_cameras() == [
        {
            "index": 0,
            "model": "imx708",
            "location": 2,
            "rotation": 180,
            "id": picam.cameras[0]["Id"],
        }
    ]
    cam = Picamera2Camera(CameraConfig(driver="picamera2", index=1))
    with pytest.raises(HardwareUnavailable, match="index 1"):
        cam.start()
    with pytest.raises(RuntimeError):
        cam.read()


# ----------------------------------------------------------------------------- factory


def test_factory_opens_real_drivers(pca: BlinkaStandIn, picam: FakePicamera2Lib) -> None:
    """RealSense through the factory: tests/test_realsense_real.py (the real library)."""
    assert isinstance(factory.open_camera(CameraConfig(driver="picamera2")), Picamera2Camera)
    car = factory.open_actuators(car_cfg())
    arm = factory.open_actuators(arm_cfg())
    assert isinstance(car, PCA9685Car) and isinstance(car, Actuators)
    assert isinstance(arm, PCA9685Arm) and isinstance(arm, Actuators)
    with pytest.raises(ValueError, match=r"use brain\.hardware\.sim"):
        factory.open_camera(CameraConfig())
    with pytest.raises(ValueError, match=r"use brain\.hardware\.sim"):
        factory.open_depth(DepthConfig(), None)
    with pytest.raises(ValueError, match=r"use brain\.hardware\.sim"):
        factory.open_actuators(CarActuatorsConfig())
    with pytest.raises(ValueError, match="realsense"):
        factory.open_depth(DepthConfig(driver="realsense"), None)


def test_daemon_refuses_to_start_without_pyrealsense2(tmp_path: Path) -> None:
    """The RealSense arm without pyrealsense2: exit 1 and a message naming extra and docs."""
    code = (
        "import sys; sys.modules['pyrealsense2'] = None\n"
        "from brain.cli import main\n"
        f"sys.exit(main(['run', '--config', {str(REPO / 'configs' / 'pi5-realsense-arm.yaml')!r},"
        " '--log-format', 'text']))\n"
    )
    env = {**os.environ, "STATE_DIRECTORY": str(tmp_path / "state")}
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 1, r.stderr
    assert "cannot start: realsense driver: the Python module 'pyrealsense2'" in r.stderr
    assert "continuon-brain[realsense]" in r.stderr and "docs/install-pi.md" in r.stderr
    assert "Traceback" not in r.stderr

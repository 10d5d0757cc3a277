"""The PCA9685 drivers on the real Adafruit library, over an emulated I2C bus.

adafruit-circuitpython-pca9685 (+ busdevice, register) does every register
access, exactly as on the robot; only the bus below it is emulated
(tests/pca9685_bus.py models the chip's registers after the datasheet). The
bus is handed to the driver at its boundary (``PwmBoard.open(cfg, i2c=...)``),
so Blinka's ``board`` is never imported.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

from brain.config import (
    CarActuatorsConfig,
    Config,
    PCA9685Config,
    SteeringConfig,
    ThrottleConfig,
)
from brain.hardware.pca9685 import PCA9685Arm, PCA9685Car, PwmBoard, safe_stop
from brain.hardware.protocols import HardwareUnavailable
from tests.pca9685_bus import (
    AI,
    MODE1,
    PRE_SCALE,
    SLEEP,
    EmulatedI2C,
    EmulatedPCA9685,
    prescale_for,
)
from tests.test_hardware_drivers import arm_cfg

pytest.importorskip("adafruit_pca9685")

STEER, THROTTLE = 0, 1


@pytest.fixture(autouse=True)
def _no_blinka(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blinka is never needed when the bus is handed in: prove it by making it unimportable."""
    for name in ("board", "busio"):
        monkeypatch.setitem(sys.modules, name, None)


def car_cfg(freq: float = 60, **kw) -> CarActuatorsConfig:
    return CarActuatorsConfig(
        driver="pca9685_car",
        pca9685=PCA9685Config(frequency_hz=freq, address=0x40),
        steering=SteeringConfig(channel=STEER, **kw.pop("steering", {})),
        throttle=ThrottleConfig(channel=THROTTLE, **{"arm_seconds": 1.5, **kw.pop("throttle", {})}),
    )


class Rig:
    """A chip at 0x40 on an emulated bus, and an opener that hands the bus to the driver."""

    def __init__(self) -> None:
        self.chip = EmulatedPCA9685()
        self.bus = EmulatedI2C({0x40: self.chip})
        self.opened = 0

    def open_board(self, cfg: PCA9685Config) -> PwmBoard:
        self.opened += 1
        return PwmBoard.open(cfg, i2c=self.bus)

    def pulses(self) -> tuple[float | None, float | None]:
        return self.chip.pulse_us(STEER), self.chip.pulse_us(THROTTLE)


def approx_us(us: float, freq: float = 60):
    """Within what 12-bit duty and PRE_SCALE rounding allow (one count plus 1 %)."""
    return pytest.approx(us, rel=0.01, abs=1e6 / freq / 4096 + 0.5)


@pytest.mark.parametrize("freq", [50, 60, 100])
def test_frequency_sets_prescale_while_asleep_then_wakes_with_auto_increment(freq: float) -> None:
    rig = Rig()
    board = rig.open_board(PCA9685Config(frequency_hz=freq))
    chip = rig.chip
    assert chip.regs[PRE_SCALE] == prescale_for(freq)
    assert chip.frequency_hz == pytest.approx(freq, rel=0.01)
    # PRE_SCALE was written while SLEEP was set (the chip ignores it otherwise) ...
    mode1 = None
    for reg, value in chip.writes:
        if reg == MODE1:
            mode1 = value
        if reg == PRE_SCALE:
            assert mode1 is not None and mode1 & SLEEP, chip.writes
    # ... and the chip ends awake, with register auto-increment for the 4-byte LED writes.
    assert not chip.sleeping and chip.regs[MODE1] & AI
    board.set_pulse_us(3, 1500)
    assert chip.pulse_us(3) == approx_us(1500, freq)
    board.close()
    assert rig.bus.deinited


def test_car_start_arms_the_esc_with_neutral_before_any_motion() -> None:
    rig = Rig()
    seen: list[tuple[float, tuple[float | None, float | None]]] = []
    car = PCA9685Car(
        car_cfg(), open_board=rig.open_board, sleep=lambda s: seen.append((s, rig.pulses()))
    )
    with pytest.raises(RuntimeError):
        car.write(np.array([0.0, 0.5]))  # not started: nothing reaches the bus
    assert rig.bus.transfers == 0
    car.start()
    # During the arming wait the ESC sees neutral and the servo centre, nothing else.
    assert [s for s, _ in seen] == [1.5]
    steer, throttle = seen[0][1]
    assert steer == approx_us(1500) and throttle == approx_us(1500)
    # The throttle channel got neutral before the steering (the motor is what can hurt),
    # and it is the only value ever written to it before arming ended.
    first_led = [r for r, _ in rig.chip.writes if r >= 0x06 and r < 0x46]
    assert first_led[0] == 0x06 + 4 * THROTTLE
    car.write(np.array([0.0, 0.5]))
    assert rig.chip.pulse_us(THROTTLE) == approx_us(1750)
    car.start()  # already armed: no second wait, no second board
    assert len(seen) == 1 and rig.opened == 1


def test_car_pulses_and_limit_clamping_at_register_level() -> None:
    rig = Rig()
    car = PCA9685Car(
        car_cfg(steering={"left_us": 1100, "center_us": 1480, "right_us": 1900}),
        open_board=rig.open_board,
        sleep=lambda s: None,
    )
    car.start()
    for action, steer_us, throttle_us in (
        ([-1.0, 1.0], 1100, 2000),
        ([0.5, -0.5], 1690, 1250),
        ([5.0, -7.0], 1900, 1000),  # beyond [-1, 1]: clamped to the calibrated ends
        ([-9.0, 9.0], 1100, 2000),
    ):
        car.write(np.array(action))
        steer, throttle = rig.pulses()
        assert steer == approx_us(steer_us) and throttle == approx_us(throttle_us), action
    for bad in ([math.nan, 0.5], [0.2, math.inf]):
        car.write(np.array([1.0, 1.0]))
        car.write(np.array(bad))
        steer, throttle = rig.pulses()
        assert steer == approx_us(1480) and throttle == approx_us(1500)


def test_car_close_leaves_neutral_running_and_the_chip_awake() -> None:
    """The PCA9685 keeps its last PWM: on the way out that must be neutral, not motion."""
    rig = Rig()
    car = PCA9685Car(car_cfg(), open_board=rig.open_board, sleep=lambda s: None)
    car.start()
    car.write(np.array([1.0, 1.0]))
    car.close()
    steer, throttle = rig.pulses()
    assert steer == approx_us(1500) and throttle == approx_us(1500)
    assert not rig.chip.sleeping  # asleep, the ESC would see signal loss instead of neutral
    assert rig.bus.deinited
    n = rig.bus.transfers
    car.neutral()  # closed: no bus traffic
    assert rig.bus.transfers == n


def test_safe_stop_writes_neutral_on_a_fresh_board_without_waiting() -> None:
    rig = Rig()
    act = car_cfg(steering={"center_us": 1520}, throttle={"arm_seconds": 10})
    car = PCA9685Car(act, open_board=rig.open_board, sleep=lambda s: None)
    car.start()
    car.write(np.array([1.0, 1.0]))  # the daemon dies while driving
    lines = safe_stop(
        Config(hardware={"camera": None, "actuators": act}),
        open_board=lambda cfg: PwmBoard.open(cfg, i2c=EmulatedI2C({0x40: rig.chip})),
    )
    steer, throttle = rig.pulses()
    assert steer == approx_us(1520) and throttle == approx_us(1500)
    assert any("throttle channel 1" in line for line in lines)


def test_arm_soft_limits_and_release_turns_the_outputs_fully_off() -> None:
    rig = Rig()
    arm = PCA9685Arm(arm_cfg("release"), open_board=rig.open_board)
    arm.start()
    assert rig.chip.pulse_us(4) is None and rig.chip.pulse_us(5) is None  # opening moves nothing
    arm.write(np.array([10.0, 200.0]))  # below the shoulder's soft limit, past the elbow's range
    assert rig.chip.pulse_us(4) == approx_us(722, 50)
    assert rig.chip.pulse_us(5) == approx_us(2400, 50)
    arm.close()
    for ch in (4, 5):
        on, off = rig.chip.led(ch)
        assert off & 0x1000, (ch, on, off)  # LEDn_OFF full-off bit: no pulse at all
        assert rig.chip.pulse_us(ch) is None


def test_safe_stop_arm_release_on_a_fresh_board() -> None:
    rig = Rig()
    arm = PCA9685Arm(arm_cfg("hold"), open_board=rig.open_board)
    arm.start()
    arm.write(np.array([90.0, 0.0]))
    cfg = Config(robot={"kind": "arm"}, hardware={"camera": None, "actuators": arm_cfg("release")})
    safe_stop(cfg, open_board=lambda c: PwmBoard.open(c, i2c=EmulatedI2C({0x40: rig.chip})))
    assert rig.chip.pulse_us(4) is None and rig.chip.pulse_us(5) is None


def test_no_chip_at_the_address_is_hardware_unavailable() -> None:
    bus = EmulatedI2C({0x41: EmulatedPCA9685()})
    with pytest.raises(HardwareUnavailable, match=r"no PCA9685 answers at address 0x40"):
        PwmBoard.open(PCA9685Config(address=0x40), i2c=bus)
    assert bus.deinited  # the bus is given back


def test_an_i2c_error_on_throttle_still_centres_the_steering() -> None:
    rig = Rig()
    car = PCA9685Car(car_cfg(), open_board=rig.open_board, sleep=lambda s: None)
    car.start()
    car.write(np.array([1.0, 1.0]))
    real_write = rig.chip.write

    def flaky(data: bytes) -> None:
        if data and 0x06 + 4 * THROTTLE <= data[0] < 0x06 + 4 * THROTTLE + 4:
            raise OSError(121, "Remote I/O error")
        real_write(data)

    rig.chip.write = flaky  # type: ignore[method-assign]
    with pytest.raises(OSError):
        car.neutral()
    assert rig.chip.pulse_us(STEER) == approx_us(1500)

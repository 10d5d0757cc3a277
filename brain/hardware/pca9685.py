"""PCA9685 PWM board drivers: a donkey car (steering servo + ESC) and a servo arm.

A PCA9685 keeps generating its last pulse train after the process that set it
has died, so a crashed daemon can leave a car driving.  That is why every path
out of these drivers writes the safe state, and why :func:`safe_stop` exists:
systemd runs it after the daemon is gone, on a fresh board object, without any
state from the daemon.

Pulses are computed from the configured ``frequency_hz``: the chip's real
frequency differs slightly (prescaler rounding, oscillator tolerance), but the
per-car calibration (``continuon hw-check --move``) is done through this same
mapping, so the error is calibrated away.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from brain.config import ArmActuatorsConfig, CarActuatorsConfig, Config, PCA9685Config
from brain.hardware.lazy import EXTENDED_BUS_HINT, PCA9685_HINT, require
from brain.hardware.protocols import CAR_ACTION_SPEC, ActionSpec, HardwareUnavailable

log = logging.getLogger(__name__)

_DRIVER = "pca9685"
_FULL_SCALE = 0xFFFF


def require_driver_modules(cfg: PCA9685Config) -> tuple[Any, ...]:
    """Import what opening the board needs; fails before touching any device."""
    pca_mod = require("adafruit_pca9685", driver=_DRIVER, install_hint=PCA9685_HINT)
    if cfg.i2c_bus == 1:
        board = require("board", driver=_DRIVER, install_hint=PCA9685_HINT)
        busio = require("busio", driver=_DRIVER, install_hint=PCA9685_HINT)
        return pca_mod, board, busio
    ext = require("adafruit_extended_bus", driver=_DRIVER, install_hint=EXTENDED_BUS_HINT)
    return pca_mod, ext


class PwmBoard:
    """One PCA9685 addressed in microseconds rather than 16-bit duty cycles."""

    def __init__(self, pca: Any, i2c: Any, frequency_hz: float):
        self._pca = pca
        self._i2c = i2c
        self.frequency_hz = float(frequency_hz)
        self.period_us = 1e6 / self.frequency_hz
        self.closed = False

    @classmethod
    def open(cls, cfg: PCA9685Config, *, i2c: Any = None) -> PwmBoard:
        """Open the bus and the chip and set its frequency; HardwareUnavailable if absent.

        ``i2c`` is an already open bus with the ``busio.I2C`` interface, used
        instead of opening ``cfg.i2c_bus`` through Blinka (tests hand in an
        emulated bus; the Adafruit PCA9685 library still does all the talking).
        """
        where = f"I2C bus {cfg.i2c_bus}"
        if i2c is not None:
            pca_mod = require("adafruit_pca9685", driver=_DRIVER, install_hint=PCA9685_HINT)
        else:
            mods = require_driver_modules(cfg)
            pca_mod = mods[0]
            i2c = cls._open_bus(cfg, mods, where)
        try:
            pca = pca_mod.PCA9685(i2c, address=cfg.address)
            pca.frequency = cfg.frequency_hz
        except (OSError, ValueError, RuntimeError) as exc:
            _quietly(i2c.deinit)
            raise HardwareUnavailable(
                f"{_DRIVER} driver: no PCA9685 answers at address 0x{cfg.address:02x} on {where} "
                f"({exc}); check wiring and power, and look for it with "
                f"`i2cdetect -y {cfg.i2c_bus}`"
            ) from exc
        return cls(pca, i2c, cfg.frequency_hz)

    @staticmethod
    def _open_bus(cfg: PCA9685Config, mods: tuple[Any, ...], where: str) -> Any:
        try:
            if cfg.i2c_bus == 1:
                _, board, busio = mods
                return busio.I2C(board.SCL, board.SDA)
            return mods[1].ExtendedI2C(cfg.i2c_bus)
        except (OSError, ValueError, RuntimeError) as exc:
            raise HardwareUnavailable(
                f"{_DRIVER} driver: cannot open {where} ({exc}); enable I2C with "
                f"`sudo raspi-config` (Interface Options > I2C) and check /dev/i2c-{cfg.i2c_bus}"
            ) from exc

    def duty_for_us(self, us: float) -> int:
        return max(0, min(_FULL_SCALE, round(us / self.period_us * _FULL_SCALE)))

    def set_pulse_us(self, channel: int, us: float) -> int:
        """Write a pulse width; returns the duty cycle that was written."""
        if self.closed:
            raise RuntimeError("PCA9685 board is closed")
        duty = self.duty_for_us(us)
        self._pca.channels[channel].duty_cycle = duty
        return duty

    def get_pulse_us(self, channel: int) -> float | None:
        """The pulse the channel is putting out now, read back from the chip (None: no pulse)."""
        duty = int(self._pca.channels[channel].duty_cycle)
        return None if duty <= 0 else duty / 0xFFFF * self.period_us

    def release(self, channel: int) -> None:
        """No pulse at all: a servo goes limp, an ESC sees signal loss."""
        if self.closed:
            raise RuntimeError("PCA9685 board is closed")
        self._pca.channels[channel].duty_cycle = 0

    def close(self) -> None:
        """Give the chip and bus back; outputs keep their last PWM (set them first)."""
        if self.closed:
            return
        self.closed = True
        _quietly(self._pca.deinit)
        deinit = getattr(self._i2c, "deinit", None)
        if deinit is not None:
            _quietly(deinit)


def _quietly(fn: Callable[[], Any]) -> None:
    try:
        fn()
    except Exception as exc:  # closing must never mask the error that led to it
        log.debug("ignored error while closing the PCA9685: %s", exc)


def _interp(x: float, x0: float, x1: float, y0: float, y1: float) -> float:
    return y0 + (x - x0) * (y1 - y0) / (x1 - x0)


def _first_error(actions: list[Callable[[], Any]]) -> None:
    """Run every action even if one fails, then raise the first failure.

    One channel's I2C error must not stop us from trying to neutralise the other.
    """
    first: BaseException | None = None
    for action in actions:
        try:
            action()
        except Exception as exc:
            log.error("PCA9685 write failed while going to neutral: %s", exc)
            if first is None:
                first = exc
    if first is not None:
        raise first


# ----------------------------------------------------------------------------- car


class PCA9685Car:
    """Steering servo and ESC of a donkey car, normalised to [-1, 1] each."""

    action_spec: ActionSpec = CAR_ACTION_SPEC

    def __init__(
        self,
        cfg: CarActuatorsConfig,
        *,
        open_board: Callable[[PCA9685Config], PwmBoard] | None = None,
        sleep: Callable[[float], None] | None = None,
    ):
        if cfg.driver != "pca9685_car":
            raise ValueError(f"PCA9685Car needs driver pca9685_car, not {cfg.driver!r}")
        self.cfg = cfg
        self._open_board = open_board or PwmBoard.open
        self._sleep = sleep or time.sleep
        if open_board is None:
            require_driver_modules(cfg.pca9685)  # fail at construction if the library is missing
        self._board: PwmBoard | None = None
        self._armed = False
        self.last_pulses_us: dict[str, int] = {}

    def steering_us(self, value: float) -> int:
        """Piecewise linear through left/center/right, so an asymmetric servo stays centred."""
        s = self.cfg.steering
        v = min(1.0, max(-1.0, float(value)))
        if v < 0:
            return round(_interp(v, -1.0, 0.0, s.left_us, s.center_us))
        return round(_interp(v, 0.0, 1.0, s.center_us, s.right_us))

    def throttle_us(self, value: float) -> int:
        t = self.cfg.throttle
        v = min(1.0, max(-1.0, float(value)))
        if v < 0:
            return round(_interp(v, -1.0, 0.0, t.reverse_us, t.neutral_us))
        return round(_interp(v, 0.0, 1.0, t.neutral_us, t.forward_us))

    def start(self) -> None:
        """Open the board and arm the ESC, which only accepts motion after seeing neutral."""
        if self._board is not None:
            return
        self._board = self._open_board(self.cfg.pca9685)
        self._write_neutral()
        self._sleep(self.cfg.throttle.arm_seconds)
        self._armed = True

    def write(self, action: np.ndarray) -> None:
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (2,):
            raise ValueError(f"car action must have 2 values (steering, throttle), got {a.shape}")
        if self._board is None or not self._armed:
            raise RuntimeError("PCA9685Car.write before start() finished arming the ESC")
        if not np.all(np.isfinite(a)):
            log.warning("non-finite car action %s: writing neutral instead", a.tolist())
            self._write_neutral()
            return
        board = self._board
        steer_us = self.steering_us(a[0])
        throttle_us = self.throttle_us(a[1])
        board.set_pulse_us(self.cfg.steering.channel, steer_us)
        self.last_pulses_us["steering"] = steer_us
        board.set_pulse_us(self.cfg.throttle.channel, throttle_us)
        self.last_pulses_us["throttle"] = throttle_us

    def neutral(self) -> None:
        if self._board is None:
            return
        self._write_neutral()

    def _write_neutral(self) -> None:
        board = self._board
        if board is None or board.closed:
            return
        t, s = self.cfg.throttle, self.cfg.steering

        def throttle() -> None:  # the motor first: it is what can hurt
            board.set_pulse_us(t.channel, t.neutral_us)
            self.last_pulses_us["throttle"] = t.neutral_us

        def steering() -> None:
            board.set_pulse_us(s.channel, s.center_us)
            self.last_pulses_us["steering"] = s.center_us

        _first_error([throttle, steering])

    def close(self) -> None:
        board = self._board
        if board is None:
            return
        try:
            self._write_neutral()
        finally:
            board.close()
            self._board = None
            self._armed = False


# ----------------------------------------------------------------------------- arm


def arm_action_spec(cfg: ArmActuatorsConfig) -> ActionSpec:
    """Joint angles in degrees, limited to the soft limits; neutral NaN = hold position."""
    limits = [j.soft_limits for j in cfg.joints]
    return ActionSpec(
        names=tuple(j.name for j in cfg.joints),
        low=tuple(lo for lo, _ in limits),
        high=tuple(hi for _, hi in limits),
        neutral=tuple(math.nan for _ in cfg.joints),
        units=tuple("deg" for _ in cfg.joints),
    )


class PCA9685Arm:
    """Hobby-servo joints on one PCA9685, commanded in degrees.

    An arm has no safe pose it could jump to, so "neutral" means hold the last
    commanded pulses (``on_stop: hold``) or go limp (``on_stop: release``), and a
    non-finite command for a joint leaves that joint where it is.
    """

    def __init__(
        self,
        cfg: ArmActuatorsConfig,
        *,
        open_board: Callable[[PCA9685Config], PwmBoard] | None = None,
    ):
        self.cfg = cfg
        self.action_spec = arm_action_spec(cfg)
        self._open_board = open_board or PwmBoard.open
        if open_board is None:
            require_driver_modules(cfg.pca9685)
        self._board: PwmBoard | None = None
        self._commanded_us: dict[str, int] = {}
        self.last_pulses_us: dict[str, int] = {}

    def joint_us(self, name: str, deg: float) -> int:
        """Degrees to pulse width, after clamping to the joint's soft limits."""
        j = next(j for j in self.cfg.joints if j.name == name)
        lo, hi = j.soft_limits
        d = min(hi, max(lo, float(deg)))
        return round(_interp(d, j.min_deg, j.max_deg, j.min_us, j.max_us))

    def start(self) -> None:
        """Open the board but write nothing: the first command decides where the arm goes."""
        if self._board is None:
            self._board = self._open_board(self.cfg.pca9685)

    def write(self, action: np.ndarray) -> None:
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (len(self.cfg.joints),):
            raise ValueError(f"arm action must have {len(self.cfg.joints)} values, got {a.shape}")
        board = self._board
        if board is None:
            raise RuntimeError("PCA9685Arm.write before start()")
        for joint, deg in zip(self.cfg.joints, a, strict=True):
            if not math.isfinite(deg):
                continue  # hold this joint
            us = self.joint_us(joint.name, deg)
            board.set_pulse_us(joint.channel, us)
            self._commanded_us[joint.name] = us
            self.last_pulses_us[joint.name] = us

    def neutral(self) -> None:
        board = self._board
        if board is None or board.closed:
            return
        actions: list[Callable[[], Any]] = []
        for joint in self.cfg.joints:
            if self.cfg.on_stop == "release":
                actions.append(functools.partial(self._release, board, joint.name, joint.channel))
            elif joint.name in self._commanded_us:
                actions.append(functools.partial(self._rewrite, board, joint.name, joint.channel))
        _first_error(actions)

    def _release(self, board: PwmBoard, name: str, channel: int) -> None:
        board.release(channel)
        self.last_pulses_us[name] = 0

    def _rewrite(self, board: PwmBoard, name: str, channel: int) -> None:
        us = self._commanded_us[name]
        board.set_pulse_us(channel, us)
        self.last_pulses_us[name] = us

    def close(self) -> None:
        board = self._board
        if board is None:
            return
        try:
            self.neutral()
        finally:
            board.close()
            self._board = None


# ----------------------------------------------------------------------------- safe stop


def safe_stop(
    cfg: Config, *, open_board: Callable[[PCA9685Config], PwmBoard] | None = None
) -> list[str]:
    """Put the PWM outputs in their safe state with no help from the (dead) daemon.

    Run by systemd as ExecStopPost.  It opens the board afresh and does not arm
    the ESC (neutral is what arming waits for anyway).  Returns what it did, one
    line per action, for the journal.
    """
    act = cfg.hardware.actuators
    opener = open_board or PwmBoard.open
    if act.driver == "sim":
        return ["actuators are simulated (driver sim): nothing to stop"]
    addr = f"PCA9685 0x{act.pca9685.address:02x} on I2C bus {act.pca9685.i2c_bus}"
    if isinstance(act, CarActuatorsConfig):
        t, s = act.throttle, act.steering
        board = opener(act.pca9685)
        lines: list[str] = []

        def throttle() -> None:
            board.set_pulse_us(t.channel, t.neutral_us)
            lines.append(f"{addr}: throttle channel {t.channel} set to neutral {t.neutral_us} us")

        def steering() -> None:
            board.set_pulse_us(s.channel, s.center_us)
            lines.append(f"{addr}: steering channel {s.channel} set to center {s.center_us} us")

        try:
            _first_error([throttle, steering])
        finally:
            board.close()
        return lines
    if isinstance(act, ArmActuatorsConfig):
        if act.on_stop == "hold":
            return [
                f"{addr}: arm on_stop is 'hold': joints left at their last position "
                "(the PCA9685 keeps its last PWM)"
            ]
        board = opener(act.pca9685)
        lines = []
        try:
            for j in act.joints:
                board.release(j.channel)
                lines.append(f"{addr}: joint {j.name} channel {j.channel} released (no pulse)")
        finally:
            board.close()
        return lines
    raise ValueError(f"unknown actuator driver {act.driver!r}")

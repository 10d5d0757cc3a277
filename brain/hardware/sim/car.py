"""A kinematic bicycle model of a 1/10 car, with the lags a policy has to live with.

A policy trained on the simulator must cope with what makes a real donkey car
hard to drive: the steering servo takes time to get where it is told, the motor
takes time to spin up and brakes when let go, and the servo may be mis-trimmed.
Tyre slip is ignored: at a few metres per second a small car on a grippy floor
barely slides, and a kinematic model cannot blow up at low speed.

Physics always advances in fixed ``SUBSTEP_S`` steps counted by an integer, so a
run depends only on the actions and the total time, never on how a caller chops
time into ``step`` calls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SUBSTEP_S = 0.005
SUBSTEP_US = 5000


@dataclass(frozen=True, slots=True)
class CarParams:
    """Geometry and actuator dynamics of the simulated car."""

    wheelbase_m: float = 0.26
    max_steer_deg: float = 25.0
    #: First-order time constant of the steering servo.
    steer_tau_s: float = 0.08
    #: Top speed at throttle 1 (SimConfig.max_speed_mps).
    max_speed_mps: float = 3.0
    #: Time constant of the motor (a DC motor against its back-EMF, i.e. an ESC with drag brake).
    motor_tau_s: float = 0.5
    #: Rolling resistance as a deceleration; it is what brings the car to a full stop.
    rolling_mps2: float = 0.3
    #: Top reverse speed as a fraction of the top forward speed (ESCs limit reverse).
    reverse_fraction: float = 0.5
    #: Mis-trim of the steering servo, added to the normalised command (SimConfig.steering_trim).
    steering_trim: float = 0.0

    @property
    def max_steer_rad(self) -> float:
        return math.radians(self.max_steer_deg)

    @property
    def no_load_speed(self) -> float:
        """Motor speed at full throttle without rolling resistance, so that top speed is exact."""
        return self.max_speed_mps + self.rolling_mps2 * self.motor_tau_s

    def throttle_for_speed(self, speed: float) -> float:
        """The steady throttle that holds ``speed`` on the nominal car (used by the expert)."""
        if speed >= 0:
            return (speed + self.rolling_mps2 * self.motor_tau_s) / self.no_load_speed
        return (speed - self.rolling_mps2 * self.motor_tau_s) / (
            self.no_load_speed * self.reverse_fraction
        )


@dataclass(frozen=True, slots=True)
class CarState:
    """Pose of the rear-axle midpoint in the track frame, and the actuators' actual state.

    ``steer_actual`` is the road-wheel angle in radians (after trim and servo
    lag), positive to the RIGHT like the steering command; ``t`` is simulated
    seconds since reset.
    """

    x: float
    y: float
    yaw: float
    speed: float
    steer_actual: float
    t: float

    FIELDS = ("x", "y", "yaw", "speed", "steer_actual", "t")

    def as_array(self) -> np.ndarray:
        return np.array([self.x, self.y, self.yaw, self.speed, self.steer_actual, self.t])


class Car:
    """Integrates the bicycle model one fixed substep at a time (pure Python floats).

    Plain floats and ``math`` are faster than numpy for a handful of numbers,
    and make every run bit-identical across machines with IEEE doubles.
    """

    def __init__(self, params: CarParams) -> None:
        self.params = params
        self._steer_alpha = 1.0 - math.exp(-SUBSTEP_S / params.steer_tau_s)
        self.x = self.y = self.yaw = self.speed = self.steer = 0.0

    def reset(self, x: float, y: float, yaw: float) -> None:
        self.x, self.y, self.yaw = float(x), float(y), float(yaw)
        self.speed = 0.0
        self.steer = 0.0

    def substep(self, steering: float, throttle: float) -> None:
        """Advance SUBSTEP_S seconds under normalised commands in [-1, 1]."""
        p = self.params
        h = SUBSTEP_S
        cmd = min(1.0, max(-1.0, steering + p.steering_trim)) * p.max_steer_rad
        self.steer += (cmd - self.steer) * self._steer_alpha

        u = min(1.0, max(-1.0, throttle))
        target = u * p.no_load_speed * (1.0 if u >= 0 else p.reverse_fraction)
        v = self.speed
        drive = (target - v) / p.motor_tau_s
        if v == 0.0 and abs(drive) <= p.rolling_mps2:
            v_new = 0.0
        else:
            direction = math.copysign(1.0, v) if v != 0.0 else math.copysign(1.0, drive)
            v_new = v + h * (drive - p.rolling_mps2 * direction)
            if v != 0.0 and (v_new > 0.0) != (v > 0.0) and abs(drive) <= p.rolling_mps2:
                v_new = 0.0  # rolling resistance stops the car; it never pushes it backwards

        # Midpoint integration of the pose with the average speed of the substep.  Steering
        # +1 is full RIGHT, as on the real car (PCA9685 ``right_us``) and in DonkeyCar; the
        # track frame is counter-clockwise positive, so a right turn lowers the yaw.
        vm = 0.5 * (v + v_new)
        yaw_rate = -vm * math.tan(self.steer) / p.wheelbase_m
        mid_yaw = self.yaw + 0.5 * h * yaw_rate
        self.x += h * vm * math.cos(mid_yaw)
        self.y += h * vm * math.sin(mid_yaw)
        self.yaw = math.remainder(self.yaw + h * yaw_rate, math.tau)
        self.speed = v_new

"""The demonstrator: a pure-pursuit driver that knows the true pose and the track.

It produces the episodes a policy learns from and the baseline a policy is
compared with, so it must be smooth (a jerky teacher teaches jerks) and finish
laps on every layout.  It plans on the nominal car and, like a driver who has
set up his car, subtracts the servo's known trim (``SimConfig.steering_trim``) from
its steering command: its labels are what *this* car needs to follow the line
(the demonstrations' "trim-aware" labels).  ``act_nominal`` is the same driver
unaware of the trim, whose feedback alone keeps a mis-trimmed car on the road with
a steady offset: the drift a learner with test-time memory should learn to correct.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .car import CarParams, CarState
from .track import Track


@dataclass(frozen=True, slots=True)
class ExpertParams:
    """Tuning of the pure-pursuit driver."""

    #: Lookahead grows with speed so that the car does not weave on straights.
    lookahead_base_m: float = 0.35
    lookahead_per_mps: float = 0.25
    lookahead_min_m: float = 0.4
    lookahead_max_m: float = 1.5
    #: Cruise speed as a fraction of the car's top speed.
    cruise_fraction: float = 0.75
    max_lateral_accel: float = 2.0
    max_decel: float = 1.5
    #: How far ahead (seconds at current speed) the speed plan is read, for the motor's lag.
    speed_preview_s: float = 0.4
    speed_gain: float = 0.8


class PurePursuitExpert:
    """Steering by pure pursuit on the centreline, throttle from a curvature speed plan."""

    def __init__(
        self,
        track: Track,
        car: CarParams,
        params: ExpertParams | None = None,
        *,
        trim: float = 0.0,
    ) -> None:
        self.track = track
        self.car = car
        self.trim = float(trim)
        self.p = params or ExpertParams()
        self.speed_plan = self._plan_speeds()

    def _plan_speeds(self) -> np.ndarray:
        """Top speed at each point: the curve there, and braking in time for those ahead."""
        tr = self.track
        cruise = self.p.cruise_fraction * self.car.max_speed_mps
        kappa = np.maximum(np.abs(tr.curvature), 1e-6)
        v = np.minimum(cruise, np.sqrt(self.p.max_lateral_accel / kappa))
        ds = tr.spacing
        two_a_ds = 2.0 * self.p.max_decel * ds
        vl = v.tolist()
        n = len(vl)
        for _ in range(2):  # twice round the loop settles the wrap-around
            for i in range(n - 1, -1, -1):
                nxt = vl[(i + 1) % n]
                vl[i] = min(vl[i], math.sqrt(nxt * nxt + two_a_ds))
        out = np.array(vl)
        out.setflags(write=False)
        return out

    def lookahead(self, speed: float) -> float:
        p = self.p
        ld = p.lookahead_base_m + p.lookahead_per_mps * abs(speed)
        return min(p.lookahead_max_m, max(p.lookahead_min_m, ld))

    def act(self, state: CarState, s: float) -> np.ndarray:
        """The trim-aware action: the nominal command with the servo's trim taken out."""
        action = self.act_nominal(state, s)
        if self.trim:
            action[0] = max(-1.0, min(1.0, float(action[0]) - self.trim))
        return action

    def act_nominal(self, state: CarState, s: float) -> np.ndarray:
        """The action [steering, throttle] at ``state``, whose projection is at arc length ``s``."""
        tr = self.track
        car = self.car
        ld = self.lookahead(state.speed)
        tx, ty = tr.point_at(s + ld)
        dx, dy = tx - state.x, ty - state.y
        c, sn = math.cos(state.yaw), math.sin(state.yaw)
        fwd = c * dx + sn * dy
        left = -sn * dx + c * dy
        dist2 = max(fwd * fwd + left * left, 1e-6)
        curvature = 2.0 * left / dist2  # = 2 sin(alpha) / distance
        delta = math.atan(car.wheelbase_m * curvature)  # positive: the target is to the left
        steering = max(-1.0, min(1.0, -delta / car.max_steer_rad))  # +1 is full right

        preview = s + max(0.0, state.speed) * self.p.speed_preview_s
        idx = round(preview / tr.spacing) % tr.n
        target = float(self.speed_plan[idx])
        throttle = car.throttle_for_speed(target) + self.p.speed_gain * (
            target - state.speed
        ) / max(car.max_speed_mps, 1e-6)
        throttle = max(-1.0, min(1.0, throttle))
        return np.array([steering, throttle])

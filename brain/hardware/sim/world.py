"""The stepped simulator: a track, a car, its sensors, an expert and the score.

This is what tests, data generation and closed-loop evaluation drive directly:
nothing in it reads a clock or sleeps, so a run is a pure function of the
configuration and the sequence of ``step(action, dt)`` calls.  The real-time
robot (robot.py) wraps it.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from brain.config import CameraConfig, DepthConfig, SimConfig

from .car import SUBSTEP_S, SUBSTEP_US, Car, CarParams, CarState
from .expert import PurePursuitExpert
from .metrics import TrackTracker
from .render import DepthRenderer, RgbRenderer
from .track import Track, make_track

_DEFAULT_CAMERA = CameraConfig()


@dataclass(frozen=True, slots=True)
class Pose:
    """A rear-axle pose on the track plane (metres, radians)."""

    x: float
    y: float
    yaw: float


def car_params(cfg: SimConfig) -> CarParams:
    """The simulated car as the configuration describes it (trim included)."""
    return CarParams(max_speed_mps=cfg.max_speed_mps, steering_trim=cfg.steering_trim)


def _as_action(action: np.ndarray | Sequence[float]) -> tuple[float, float]:
    a = np.asarray(action, dtype=np.float64).reshape(-1)
    if a.shape != (2,):
        raise ValueError(f"a car action is [steering, throttle], got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"action must be finite, got {a.tolist()}")
    a = np.clip(a, -1.0, 1.0)
    return float(a[0]), float(a[1])


class SimWorld:
    """A simulated car on a track; advance it with ``step`` and look at it with ``render_*``.

    Rendering data (the track's texture map, noise banks) is built on the first
    render call only, so runs that need no images, such as lap tests, start fast.
    """

    def __init__(
        self,
        sim_cfg: SimConfig,
        camera: CameraConfig | None = _DEFAULT_CAMERA,
        depth: DepthConfig | None = None,
    ) -> None:
        self.cfg = sim_cfg
        self.camera_cfg = camera
        self.depth_cfg = depth
        self.track: Track = make_track(sim_cfg.track)
        self.params = car_params(sim_cfg)
        self.car = Car(self.params)
        self.tracker = TrackTracker(self.track)
        # The demonstrator plans on the nominal car and takes the known trim out.
        nominal = CarParams(max_speed_mps=sim_cfg.max_speed_mps)
        self.expert = PurePursuitExpert(self.track, nominal, trim=sim_cfg.steering_trim)
        self._rgb: RgbRenderer | None = None
        self._depth: DepthRenderer | None = None
        self._build_lock = threading.Lock()
        self._action = (0.0, 0.0)
        self._steps = 0
        self._elapsed_us = 0
        self.reset()

    # ------------------------------------------------------------------ dynamics

    def reset(self, pose: Pose | tuple[float, float, float] | None = None) -> CarState:
        """Put the car at rest at ``pose`` (default: the start line, facing along the track)."""
        if pose is None:
            x, y = (float(v) for v in self.track.points[0])
            yaw = float(self.track.heading[0])
        else:
            x, y, yaw = (pose.x, pose.y, pose.yaw) if isinstance(pose, Pose) else pose
        self.car.reset(x, y, yaw)
        self.tracker.reset(x, y)
        self._action = (0.0, 0.0)
        self._steps = 0
        self._elapsed_us = 0
        return self.state

    def step(self, action: np.ndarray | Sequence[float], dt: float) -> CarState:
        """Hold ``action`` (steering, throttle in [-1, 1]) for ``dt`` seconds."""
        self._action = _as_action(action)
        return self.advance(dt)

    def advance(self, dt: float) -> CarState:
        """Let ``dt`` seconds pass under the last action.

        Time is kept in integer microseconds and physics runs whole substeps, so
        ``advance(0.05)`` equals ``advance(0.02); advance(0.03)`` bit for bit.
        """
        if not math.isfinite(dt) or dt < 0:
            raise ValueError(f"dt must be a finite non-negative number of seconds, got {dt}")
        self._elapsed_us += round(dt * 1e6)
        self._run_substeps()
        return self.state

    def _run_substeps(self) -> None:
        target = self._elapsed_us // SUBSTEP_US
        car = self.car
        tracker = self.tracker
        steer, throttle = self._action
        while self._steps < target:
            x0, y0 = car.x, car.y
            car.substep(steer, throttle)
            self._steps += 1
            moved = math.hypot(car.x - x0, car.y - y0)
            tracker.update(car.x, car.y, moved, SUBSTEP_S, self._steps * SUBSTEP_S)

    def advance_to(self, t: float) -> CarState:
        """Let time pass until ``t`` seconds since reset (no-op if already there)."""
        target_us = round(t * 1e6)
        if target_us > self._elapsed_us:
            self._elapsed_us = target_us
            self._run_substeps()
        return self.state

    @property
    def action(self) -> np.ndarray:
        """The action being held now."""
        return np.array(self._action)

    @property
    def state(self) -> CarState:
        c = self.car
        return CarState(c.x, c.y, c.yaw, c.speed, c.steer, self._steps * SUBSTEP_S)

    @property
    def frame_key(self) -> int:
        """Identifies the physics instant; sensor noise is drawn from it, so renders are pure."""
        return self._steps

    def expert_action(self, *, trim_aware: bool = True) -> np.ndarray:
        """What the demonstrator would do now, as [steering, throttle] in [-1, 1].

        ``trim_aware=False``: the command of a driver who does not know the servo's trim.
        """
        act = self.expert.act if trim_aware else self.expert.act_nominal
        return act(self.state, self.tracker.s)

    def metrics(self) -> dict[str, float | int | bool | str | list[float]]:
        return self.tracker.as_dict(self.car.speed, self._steps * SUBSTEP_S)

    # ------------------------------------------------------------------ sensors

    def rgb_renderer(self) -> RgbRenderer:
        if self.camera_cfg is None:
            raise RuntimeError("this SimWorld has no camera (camera=None)")
        with self._build_lock:
            if self._rgb is None:
                self._rgb = RgbRenderer(
                    self.track, self.cfg, self.camera_cfg.width, self.camera_cfg.height
                )
            return self._rgb

    def depth_renderer(self) -> DepthRenderer:
        with self._build_lock:
            if self._depth is None:
                cfg = self.depth_cfg or DepthConfig()
                self._depth = DepthRenderer(self.cfg, cfg.width, cfg.height, cfg.max_depth_m)
            return self._depth

    def render_rgb(self) -> np.ndarray:
        """The forward camera's image now: HxWx3 uint8 RGB."""
        return self.rgb_renderer().render(self.state, self.frame_key)

    def render_depth(self) -> np.ndarray:
        """Depth aligned to the camera now: HxW uint16 millimetres along the optical axis, 0 = none.

        Uses the DepthConfig given at construction, or DepthConfig's defaults.
        """
        return self.depth_renderer().render(self.frame_key)

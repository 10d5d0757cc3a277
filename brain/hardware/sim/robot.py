"""The simulated robot in real time, behind the same protocols as the real hardware.

The daemon reads cameras on capture threads and writes actuators from the
control thread; here all of them share one SimWorld.  The world is advanced
lazily: whenever anyone looks at it or acts on it, physics first catches up with
the clock (holding the last written action), so there is no simulation thread
to schedule and a fake clock makes every timing test exact.  The lock covers
only physics; rendering happens outside it on a snapshot of the pose, so a
frame being drawn never delays an actuator write.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

import numpy as np

from brain.config import CameraConfig, Config, DepthConfig, SimConfig

from ..protocols import CAR_ACTION_SPEC, ActionSpec, DepthFrame, Frame
from .car import CarState
from .world import Pose, SimWorld

#: A RealSense pair triggered together still timestamps its two streams a little apart.
DEPTH_SKEW_S = 0.0004


class SimRobot:
    """A simulated car with a camera, optional depth camera and actuators, in real time.

    ``clock`` gives monotonic seconds and ``sleep`` waits on that clock; pass a
    fake pair to drive the robot without waiting (``sleep`` defaults to
    ``time.sleep``, right for ``time.monotonic``).
    """

    def __init__(
        self,
        sim_cfg: SimConfig,
        camera_cfg: CameraConfig | None = None,
        depth_cfg: DepthConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self.world = SimWorld(sim_cfg, camera_cfg, depth_cfg)
        self.clock = clock
        self.sleep = sleep or time.sleep
        self._lock = threading.Lock()
        self._t0 = clock()
        #: Frames of every sensor are scheduled on this shared epoch, like hardware-synced cameras.
        self.epoch = self._t0
        self.camera = SimCamera(self, camera_cfg) if camera_cfg is not None else None
        self.depth = SimDepthCamera(self, depth_cfg) if depth_cfg is not None else None
        self.actuators = SimActuators(self)

    # Everything below takes the lock only around physics.

    def _catch_up(self) -> float:
        """Advance the world to now; the caller holds the lock.  Returns the clock value."""
        now = self.clock()
        self.world.advance_to(now - self._t0)
        return now

    def _snapshot(self, due: float | None = None) -> tuple[float, CarState, int]:
        """The world as of a frame's scheduled exposure time ``due``.

        Like a real sensor timestamp, the frame is stamped with when it was
        exposed, not when a (possibly GIL-delayed) thread got round to it.  If
        the world has already moved past ``due`` (another thread advanced it),
        the frame shows and is stamped with the world's current time instead.
        """
        with self._lock:
            world_now = self._t0 + self.world.state.t
            if due is not None and due >= world_now:
                self.world.advance_to(due - self._t0)
                return due, self.world.state, self.world.frame_key
            if due is None:
                now = self._catch_up()
                return now, self.world.state, self.world.frame_key
            return world_now, self.world.state, self.world.frame_key

    def _apply(self, action: tuple[float, float]) -> None:
        with self._lock:
            self._catch_up()
            self.world.step(action, 0.0)

    def reset(self, pose: Pose | tuple[float, float, float] | None = None) -> CarState:
        """Start a new run at ``pose`` (default: the start line) with simulated time 0 = now."""
        with self._lock:
            self._t0 = self.clock()
            return self.world.reset(pose)

    @property
    def state(self) -> CarState:
        with self._lock:
            self._catch_up()
            return self.world.state

    def expert_action(self) -> np.ndarray:
        with self._lock:
            self._catch_up()
            return self.world.expert_action()

    def metrics(self) -> dict[str, float | int | bool | str | list[float]]:
        with self._lock:
            self._catch_up()
            return self.world.metrics()

    def close(self) -> None:
        self.actuators.close()
        for sensor in (self.camera, self.depth):
            if sensor is not None:
                sensor.close()


class _Clocked:
    """Frame timing shared by both cameras: frame k is due at epoch + skew + k / fps."""

    def __init__(self, robot: SimRobot, fps: float, skew: float) -> None:
        self._robot = robot
        self.fps = float(fps)
        self._skew = skew
        self._last = 0
        self._closed = False
        self._mutex = threading.Lock()

    def start(self) -> None:
        self._closed = False

    def close(self) -> None:
        self._closed = True

    def _wait_for_frame(self, timeout: float) -> tuple[int, float]:
        """Sleep until the next frame is due (never a past one: the world cannot rewind)."""
        if self._closed:
            raise RuntimeError(f"{type(self).__name__} is closed")
        r = self._robot
        period = 1.0 / self.fps
        now = r.clock()
        with self._mutex:
            k = max(self._last + 1, math.ceil((now - r.epoch - self._skew) / period - 1e-9))
            self._last = k
        due = r.epoch + self._skew + k * period
        if due - now > timeout:
            r.sleep(max(0.0, timeout))
            raise TimeoutError(f"no frame within {timeout} s at {self.fps} fps")
        while (remaining := due - r.clock()) > 0:
            r.sleep(remaining)
        return k, due


class SimCamera(_Clocked):
    """The forward colour camera (``Camera`` protocol)."""

    def __init__(self, robot: SimRobot, cfg: CameraConfig) -> None:
        super().__init__(robot, cfg.fps, 0.0)
        self.width = cfg.width
        self.height = cfg.height
        self._renderer = robot.world.rgb_renderer  # built once, lazily

    def start(self) -> None:
        # Build the scene (ground raster, sky) now, like a real camera's warm-up: it takes
        # 0.3-1.5 s, and the first frame would otherwise arrive that late, after the
        # control loop has started and counted stale frames.
        super().start()
        self._renderer()

    def read(self, timeout: float = 1.0) -> Frame:
        seq, due = self._wait_for_frame(timeout)
        t, state, key = self._robot._snapshot(due)
        return Frame(self._renderer().render(state, key), t_capture=t, seq=seq, sensor="camera")


class SimDepthCamera(_Clocked):
    """Depth aligned to the colour camera (``DepthCamera`` protocol), in millimetres."""

    def __init__(self, robot: SimRobot, cfg: DepthConfig) -> None:
        super().__init__(robot, cfg.fps, DEPTH_SKEW_S)
        self.width = cfg.width
        self.height = cfg.height
        self._renderer = robot.world.depth_renderer

    def start(self) -> None:
        super().start()
        self._renderer()

    def read_depth(self, timeout: float = 1.0) -> DepthFrame:
        seq, due = self._wait_for_frame(timeout)
        t, _state, key = self._robot._snapshot(due)
        r = self._renderer()
        return DepthFrame(
            r.render(key), t_capture=t, seq=seq, depth_scale=r.depth_scale, sensor="depth"
        )


class SimActuators:
    """Steering servo and ESC of the simulated car (``Actuators`` protocol)."""

    action_spec: ActionSpec = CAR_ACTION_SPEC

    def __init__(self, robot: SimRobot) -> None:
        self._robot = robot
        self._closed = False
        self.last_command = CAR_ACTION_SPEC.neutral_array()

    def start(self) -> None:
        self._closed = False

    def write(self, action: np.ndarray) -> None:
        if self._closed:
            raise RuntimeError("SimActuators is closed")
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (self.action_spec.size,):
            raise ValueError(f"expected {self.action_spec.names}, got an action of shape {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"action must be finite, got {a.tolist()}")
        a = np.clip(a, self.action_spec.low, self.action_spec.high)
        self._robot._apply((float(a[0]), float(a[1])))
        self.last_command = a

    def neutral(self) -> None:
        neutral = self.action_spec.neutral_array()
        self._robot._apply((float(neutral[0]), float(neutral[1])))
        self.last_command = neutral

    def close(self) -> None:
        if not self._closed:
            self.neutral()
        self._closed = True


def build_sim_robot(config: Config) -> SimRobot:
    """The simulated robot for a configuration: its sim section and its ``driver: sim`` sensors.

    With frame-triggered ticks the sim camera renders at the control rate, as a real one
    is asked to (``Config.frame_sensors``).
    """
    camera, depth = config.frame_sensors()
    camera = camera if camera is not None and camera.driver == "sim" else None
    depth = depth if depth is not None and depth.driver == "sim" else None
    return SimRobot(config.sim, camera, depth)

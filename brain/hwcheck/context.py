"""What every check may use: the config, the knobs, and the devices opened for one run."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brain.config import CameraConfig, Config, DepthConfig
from brain.hardware.protocols import Camera, DepthCamera
from brain.hwcheck import system
from brain.hwcheck.i2c import probe_i2c
from common.health import HostReading, read_host

log = logging.getLogger(__name__)


@dataclass
class CheckContext:
    """Everything a check may use, and the devices opened for the run (closed by ``close``).

    ``sim_robot`` may be handed in (tests); otherwise with ``sim`` set one is
    built from the config on first use.  The knobs after ``clock`` make the
    checks quick to test and let them run against a fake host.
    """

    config: Config
    sim: bool = False
    move: bool = False
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    sim_robot: Any = None
    grab_frames: int = 30
    warmup_frames: int = 3
    depth_frames: int = 10
    skew_seconds: float = 1.0
    read_timeout_s: float = 2.0
    move_step_s: float = 0.05
    dev_dir: Path = Path("/dev")
    #: The host's health (memory, CPU temperature, disk of the given path): common.health.
    read_host: Callable[[Path], HostReading] = read_host
    vcgencmd: Callable[..., str | None] = system.run_vcgencmd
    say: Callable[[str], None] = lambda _msg: None
    _camera: Camera | None = field(default=None, repr=False)
    _depth: DepthCamera | None = field(default=None, repr=False)
    _started: list[Any] = field(default_factory=list, repr=False)
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)
    _own_robot: bool = field(default=False, repr=False)
    #: Set once a check has started or written actuators (only ever with ``move``).
    actuators_touched: bool = field(default=False, repr=False)

    # -------------------------------------------------------------- sim

    def sim_camera_config(self) -> CameraConfig:
        cam = self.config.hardware.camera or CameraConfig()
        return cam.model_copy(update={"driver": "sim", "serial": None})

    def sim_depth_config(self) -> DepthConfig:
        """The config's depth settings, or a depth camera matching the colour camera."""
        d = self.config.hardware.depth
        if d is not None:
            return d.model_copy(update={"driver": "sim", "serial": None})
        cam = self.sim_camera_config()
        return DepthConfig(driver="sim", width=cam.width, height=cam.height, fps=cam.fps)

    def robot(self) -> Any:
        """The simulated robot (``--sim``), built on first use."""
        if not self.sim:
            raise RuntimeError("no simulated robot outside --sim")
        if self.sim_robot is None:
            from brain.hardware.sim import SimRobot

            self.sim_robot = SimRobot(
                self.config.sim, self.sim_camera_config(), self.sim_depth_config(), clock=self.clock
            )
            self._own_robot = True
        return self.sim_robot

    # -------------------------------------------------------------- sensors

    def camera(self) -> Camera:
        """The colour camera, opened and started (real drivers: errors propagate)."""
        if self._camera is None:
            cam: Camera
            if self.sim:
                cam = self.robot().camera
            else:
                from brain.hardware import factory

                hw = self.config.hardware
                assert hw.camera is not None
                cam = factory.open_camera(hw.camera)
                if hw.depth is not None and hw.depth.driver == "realsense":
                    self._depth = factory.open_depth(hw.depth, cam)
            self._start(cam)
            self._camera = cam
            return cam
        return self._camera

    def depth(self) -> DepthCamera:
        """The depth camera, opened and started (for a RealSense, the colour camera object)."""
        if self._depth is None or self._depth not in self._started:
            if self.sim:
                dev = self.robot().depth
                if dev is None:
                    raise RuntimeError("the simulated robot was built without a depth camera")
                self._start(dev)
                self._depth = dev
            else:
                self.camera()  # a RealSense serves depth from the colour camera's pipeline
                if self._depth is None:
                    raise RuntimeError("no depth stream was opened")
        return self._depth

    def _start(self, dev: Any) -> None:
        if any(d is dev for d in self._started):
            return
        dev.start()
        self._started.append(dev)

    def realsense_devices(self) -> list[dict[str, Any]]:
        """RealSense devices on USB; HardwareUnavailable when pyrealsense2 cannot be imported."""
        if "realsense" not in self._cache:
            from brain.hardware import realsense_camera

            self._cache["realsense"] = realsense_camera.list_devices()
        devices: list[dict[str, Any]] = self._cache["realsense"]
        return devices

    def picameras(self) -> list[dict[str, Any]]:
        """Cameras libcamera sees; HardwareUnavailable when picamera2 cannot be imported."""
        if "picamera2" not in self._cache:
            from brain.hardware import picamera2_camera

            self._cache["picamera2"] = picamera2_camera.list_cameras()
        cameras: list[dict[str, Any]] = self._cache["picamera2"]
        return cameras

    def i2c_probe(self) -> dict[str, Any]:
        """Probe the configured PCA9685 address once per run (see :func:`probe_i2c`)."""
        if "i2c" not in self._cache:
            self._cache["i2c"] = probe_i2c(
                self.config.hardware.actuators.pca9685, dev_dir=self.dev_dir, sleep=self.sleep
            )
        probe: dict[str, Any] = self._cache["i2c"]
        return probe

    # -------------------------------------------------------------- cleanup

    def close(self) -> None:
        """Stop what was started; moved sim actuators go to neutral.  Never raises.

        Actuators that were not moved (no ``--move``) are not written here either.
        """
        devices, self._started = self._started, []
        for dev in reversed(devices):
            try:
                dev.close()
            except Exception as exc:
                log.warning("closing %s failed: %s", type(dev).__name__, exc)
        self._camera = self._depth = None
        robot = self.sim_robot
        if robot is not None:
            if self.actuators_touched:
                with contextlib.suppress(Exception):
                    robot.actuators.neutral()
            if self._own_robot and self.actuators_touched:
                closer = getattr(robot, "close", None)
                if closer is not None:
                    try:
                        closer()
                    except Exception as exc:
                        log.warning("closing the simulated robot failed: %s", exc)
            if self._own_robot:
                self.sim_robot = None
                self._own_robot = False

"""Turning the hardware section of a config into device objects, sim or real."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from brain.config import Config
from brain.hardware.protocols import Actuators, Camera, DepthCamera

_log = logging.getLogger(__name__)


@dataclass
class RobotDevices:
    camera: Camera | None
    depth: DepthCamera | None
    actuators: Actuators
    sim: Any | None = None  # brain.hardware.sim.SimRobot when any driver is "sim"

    def start(self) -> None:
        """Cameras first, so frames flow before the actuators (and an ESC) are armed."""
        for dev in (self.camera, self.depth):
            if dev is not None:
                dev.start()
        self.actuators.start()

    def close(self) -> None:
        """Neutral first, then release everything; never raises."""
        for dev in (self.actuators, self.depth, self.camera):
            if dev is None:
                continue
            try:
                if dev is self.actuators:
                    dev.neutral()
                dev.close()
            except Exception:  # closing must go on for the other devices
                _log.exception("closing %s failed", type(dev).__name__)


def open_devices(config: Config) -> RobotDevices:
    """Open the configured devices.  Real driver libraries are imported only here, lazily."""
    hw = config.hardware
    # A SimRobot when any driver is "sim" (uses_sim), imported lazily like the drivers;
    # Any because that is decided per driver below, which the checker cannot follow.
    sim: Any = None
    if config.uses_sim:
        from brain.hardware.sim import build_sim_robot

        sim = build_sim_robot(config)
    from brain.hardware import factory

    camera_cfg, depth_cfg = config.frame_sensors()  # at the control rate for frame ticks
    camera: Camera | None = None
    if camera_cfg is not None:
        camera = sim.camera if camera_cfg.driver == "sim" else factory.open_camera(camera_cfg)
    depth: DepthCamera | None = None
    if depth_cfg is not None:
        depth = sim.depth if depth_cfg.driver == "sim" else factory.open_depth(depth_cfg, camera)
    if hw.actuators.driver == "sim":
        actuators: Actuators = sim.actuators
    else:
        actuators = factory.open_actuators(hw.actuators)
    return RobotDevices(camera=camera, depth=depth, actuators=actuators, sim=sim)

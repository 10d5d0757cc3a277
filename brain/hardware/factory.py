"""Build the real hardware drivers named in the configuration.

Only the real drivers live here; the simulated robot is wired by
``brain.hardware.sim``, so that importing this module never pulls in the sim
and a config asking for ``sim`` here is a wiring mistake, not a fallback.
Importing the driver modules is cheap: their libraries load when a driver is
constructed, which is when HardwareUnavailable can be raised.
"""

from __future__ import annotations

from brain.config import ArmActuatorsConfig, CameraConfig, CarActuatorsConfig, DepthConfig
from brain.hardware.pca9685 import PCA9685Arm, PCA9685Car
from brain.hardware.picamera2_camera import Picamera2Camera
from brain.hardware.protocols import Actuators, Camera, DepthCamera
from brain.hardware.realsense_camera import RealSenseCamera

_USE_SIM = "use brain.hardware.sim"


def open_camera(cfg: CameraConfig) -> Camera:
    """The colour camera; for a RealSense, pass the result to :func:`open_depth` too."""
    if cfg.driver == "picamera2":
        return Picamera2Camera(cfg)
    if cfg.driver == "realsense":
        return RealSenseCamera(cfg, None)
    if cfg.driver == "sim":
        raise ValueError(_USE_SIM)
    raise ValueError(f"unknown camera driver {cfg.driver!r}")


def open_depth(cfg: DepthConfig, camera: object | None) -> DepthCamera:
    """The depth camera: for RealSense, the very object that serves colour (one device).

    Call before starting ``camera``; start and close are idempotent on it, so
    the owners of the colour and depth sensors may each call them.
    """
    if cfg.driver == "realsense":
        if not isinstance(camera, RealSenseCamera):
            raise ValueError(
                "realsense depth is aligned to the RealSense colour stream: open the camera "
                "with driver realsense first and pass it to open_depth"
            )
        camera.enable_depth(cfg)
        return camera
    if cfg.driver == "sim":
        raise ValueError(_USE_SIM)
    raise ValueError(f"unknown depth driver {cfg.driver!r}")


def open_actuators(cfg: CarActuatorsConfig | ArmActuatorsConfig) -> Actuators:
    if cfg.driver == "pca9685_car":
        assert isinstance(cfg, CarActuatorsConfig)
        return PCA9685Car(cfg)
    if cfg.driver == "pca9685_arm":
        assert isinstance(cfg, ArmActuatorsConfig)
        return PCA9685Arm(cfg)
    if cfg.driver == "sim":
        raise ValueError(_USE_SIM)
    raise ValueError(f"unknown actuator driver {cfg.driver!r}")

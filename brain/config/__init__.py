"""The robot's configuration: one YAML file, checked against a strict schema.

A robot that starts with a typo in its config can drive off a table, so every
key is checked: unknown keys are errors, values are range-checked, and the
error names the file, the line, the key, the value and what was expected.

``brain.config`` is the one import point every service uses: the sections live in
submodules by job (:mod:`.hardware`, :mod:`.runtime`, :mod:`.network`, :mod:`.updates`),
the root model and loading live here, and every public name is re-exported here.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from pydantic import model_validator

from brain import paths
from brain.config.base import Strict
from brain.config.hardware import (
    ArmActuatorsConfig,
    CameraConfig,
    CarActuatorsConfig,
    DepthConfig,
    HardwareConfig,
    JointConfig,
    PCA9685Config,
    RobotConfig,
    SimConfig,
    SteeringConfig,
    ThrottleConfig,
)
from brain.config.network import ApiConfig, CloudConfig, DiscoveryConfig, UploaderConfig
from brain.config.runtime import (
    ControlConfig,
    LoggingConfig,
    PathsConfig,
    PolicyConfig,
    RecordingConfig,
    SafetyConfig,
    SupervisorConfig,
)
from brain.config.updates import LocalTrainConfig, OtaConfig
from brain.yaml_config import load_model_file, parse_model

__all__ = [
    "CONFIG_DIR",
    "CONFIG_ENV",
    "DEFAULT_CONFIG",
    "SYSTEM_CONFIG",
    "ApiConfig",
    "ArmActuatorsConfig",
    "CameraConfig",
    "CarActuatorsConfig",
    "CloudConfig",
    "Config",
    "ConfigError",
    "ControlConfig",
    "DepthConfig",
    "DiscoveryConfig",
    "HardwareConfig",
    "JointConfig",
    "LocalTrainConfig",
    "LoggingConfig",
    "OtaConfig",
    "PCA9685Config",
    "PathsConfig",
    "PolicyConfig",
    "RecordingConfig",
    "RobotConfig",
    "SafetyConfig",
    "SimConfig",
    "SteeringConfig",
    "SupervisorConfig",
    "ThrottleConfig",
    "UploaderConfig",
    "default_config_path",
    "load_config",
    "parse_config",
]

# The default-config lookup lives in the stdlib-only brain.paths (the fast `continuon estop`
# path needs it before pydantic is imported); these names are its public face here.
CONFIG_DIR = paths.CONFIG_DIR
DEFAULT_CONFIG = paths.DEFAULT_CONFIG
SYSTEM_CONFIG = paths.SYSTEM_CONFIG
CONFIG_ENV = paths.CONFIG_ENV
default_config_path = paths.default_config_path


class ConfigError(ValueError):
    """A configuration file could not be used; ``str()`` is meant for the robot builder."""

    def __init__(self, path: str | os.PathLike[str], problems: list[str]):
        self.path = str(path)
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid configuration {self.path}:\n{lines}")


# ----------------------------------------------------------------------------- the root


class Config(Strict):
    robot: RobotConfig = RobotConfig()
    hardware: HardwareConfig = HardwareConfig()
    sim: SimConfig = SimConfig()
    control: ControlConfig = ControlConfig()
    safety: SafetyConfig = SafetyConfig()
    policy: PolicyConfig = PolicyConfig()
    recording: RecordingConfig = RecordingConfig()
    supervisor: SupervisorConfig = SupervisorConfig()
    logging: LoggingConfig = LoggingConfig()
    paths: PathsConfig = PathsConfig()
    api: ApiConfig = ApiConfig()
    discovery: DiscoveryConfig = DiscoveryConfig()
    cloud: CloudConfig = CloudConfig()
    uploader: UploaderConfig = UploaderConfig()
    ota: OtaConfig = OtaConfig()
    local_train: LocalTrainConfig = LocalTrainConfig()

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        hw = self.hardware
        act = hw.actuators
        if self.robot.kind == "car" and not isinstance(act, CarActuatorsConfig):
            raise ValueError("robot.kind 'car' needs hardware.actuators.driver sim or pca9685_car")
        if self.robot.kind == "arm" and not isinstance(act, ArmActuatorsConfig):
            raise ValueError("robot.kind 'arm' needs hardware.actuators.driver pca9685_arm")
        depth_rs = hw.depth is not None and hw.depth.driver == "realsense"
        if depth_rs and (hw.camera is None or hw.camera.driver != "realsense"):
            raise ValueError(
                "hardware.depth.driver realsense aligns depth to the RealSense colour "
                "stream, so hardware.camera.driver must be realsense too"
            )
        if self.control.autopilot == "expert" and act.driver != "sim":
            raise ValueError("control.autopilot 'expert' exists only on the simulated robot")
        names = set(self.action_names)
        for section in ("limits", "slew_per_s"):
            unknown = set(getattr(self.safety, section)) - names
            if unknown:
                raise ValueError(
                    f"safety.{section} names unknown actions {sorted(unknown)}; "
                    f"this robot's actions are {sorted(names)}"
                )
        return self

    @property
    def action_names(self) -> tuple[str, ...]:
        act = self.hardware.actuators
        if isinstance(act, ArmActuatorsConfig):
            return tuple(j.name for j in act.joints)
        return ("steering", "throttle")

    @property
    def uses_sim(self) -> bool:
        hw = self.hardware
        drivers: list[str] = [hw.actuators.driver]
        drivers += [s.driver for s in (hw.camera, hw.depth) if s is not None]
        return "sim" in drivers

    def frame_sensors(self) -> tuple[CameraConfig | None, DepthConfig | None]:
        """The camera and depth sections as the drivers should open them.

        With ``control.trigger: frame`` a tick follows each frame, so the sensors are asked
        for the control rate rather than their own ``fps`` (which then applies only to the
        timer trigger); a driver that cannot run at that rate picks the nearest it can.
        """
        hw = self.hardware
        if self.control.trigger != "frame" or hw.camera is None:
            return hw.camera, hw.depth
        rate = {"fps": self.control.rate_hz}
        depth = hw.depth.model_copy(update=rate) if hw.depth is not None else None
        return hw.camera.model_copy(update=rate), depth

    def config_hash(self) -> str:
        """A stable hash of the effective configuration, recorded with every episode."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    def state_dir(self) -> Path:
        return paths.state_dir(self.paths.state_dir)

    def episodes_dir(self) -> Path:
        return self.recording.root or self.state_dir() / "episodes"

    def ota_dir(self) -> Path:
        return self.ota.slots_dir or self.state_dir() / "ota"

    def localtrain_dir(self) -> Path:
        return self.local_train.work_dir or self.state_dir() / "localtrain"

    def ota_hardware_id(self) -> str:
        return self.ota.hardware_id or f"continuon-{self.robot.kind}"

    def runtime_dir(self) -> Path:
        return paths.runtime_dir(self.paths.runtime_dir, self.paths.state_dir)


# ----------------------------------------------------------------------------- loading

_UNION_TAGS = ("car", "arm")  # the actuator union's tags in pydantic error locations


def parse_config(raw: Any, source: str = "<config>", text: str | None = None) -> Config:
    """Validate already-loaded YAML data; ``text`` lets errors carry line numbers."""
    return parse_model(
        Config, raw, error=ConfigError, source=source, text=text, union_tags=_UNION_TAGS
    )


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read and validate a YAML config file.  Raises ConfigError naming what is wrong."""
    p = Path(path) if path is not None else DEFAULT_CONFIG
    return load_model_file(Config, p, error=ConfigError, union_tags=_UNION_TAGS)

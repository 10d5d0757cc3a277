"""What the robot is and what it is made of: its id and kind, sensors, actuators, the sim."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, model_validator

from brain.config.base import Strict


class RobotConfig(Strict):
    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")] = "continuon-sim"
    kind: Literal["car", "arm"] = "car"


# ----------------------------------------------------------------------------- sensors


class CameraConfig(Strict):
    driver: Literal["sim", "picamera2", "realsense"] = "sim"
    width: Annotated[int, Field(ge=32, le=4096)] = 640
    height: Annotated[int, Field(ge=32, le=4096)] = 480
    fps: Annotated[float, Field(gt=0, le=120)] = 30.0
    # picamera2: index in Picamera2.global_camera_info(); realsense: serial number or null.
    index: Annotated[int, Field(ge=0, le=7)] = 0
    serial: str | None = None


class DepthConfig(Strict):
    driver: Literal["sim", "realsense"] = "sim"
    width: Annotated[int, Field(ge=32, le=4096)] = 640
    height: Annotated[int, Field(ge=32, le=4096)] = 480
    fps: Annotated[float, Field(gt=0, le=120)] = 30.0
    serial: str | None = None
    max_depth_m: Annotated[float, Field(gt=0, le=65)] = 6.0


# ----------------------------------------------------------------------------- actuators


class PCA9685Config(Strict):
    i2c_bus: Annotated[int, Field(ge=0, le=22)] = 1
    address: Annotated[int, Field(ge=0x03, le=0x77)] = 0x40
    frequency_hz: Annotated[float, Field(ge=24, le=1526)] = 60.0


_PULSE = Annotated[int, Field(ge=400, le=2600)]
_CHANNEL = Annotated[int, Field(ge=0, le=15)]


class SteeringConfig(Strict):
    """Servo pulse widths in microseconds, calibrated per car (``continuon hw-check --move``)."""

    channel: _CHANNEL = 0
    left_us: _PULSE = 1000
    center_us: _PULSE = 1500
    right_us: _PULSE = 2000

    @model_validator(mode="after")
    def _ordered(self) -> SteeringConfig:
        lo, hi = sorted((self.left_us, self.right_us))
        if not lo < self.center_us < hi:
            raise ValueError(
                f"center_us {self.center_us} must lie strictly between left_us {self.left_us} "
                f"and right_us {self.right_us}"
            )
        return self


class ThrottleConfig(Strict):
    """ESC pulse widths in microseconds; the ESC arms by seeing neutral for ``arm_seconds``."""

    channel: _CHANNEL = 1
    reverse_us: _PULSE = 1000
    neutral_us: _PULSE = 1500
    forward_us: _PULSE = 2000
    arm_seconds: Annotated[float, Field(ge=0, le=10)] = 1.0

    @model_validator(mode="after")
    def _ordered(self) -> ThrottleConfig:
        lo, hi = sorted((self.reverse_us, self.forward_us))
        if not lo < self.neutral_us < hi:
            raise ValueError(
                f"neutral_us {self.neutral_us} must lie strictly between reverse_us "
                f"{self.reverse_us} and forward_us {self.forward_us}"
            )
        return self


class CarActuatorsConfig(Strict):
    driver: Literal["sim", "pca9685_car"] = "sim"
    pca9685: PCA9685Config = PCA9685Config()
    steering: SteeringConfig = SteeringConfig()
    throttle: ThrottleConfig = ThrottleConfig()

    @model_validator(mode="after")
    def _distinct_channels(self) -> CarActuatorsConfig:
        if self.steering.channel == self.throttle.channel:
            raise ValueError(
                f"steering.channel and throttle.channel are both {self.steering.channel}"
            )
        return self


class JointConfig(Strict):
    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
    channel: _CHANNEL
    min_us: _PULSE = 500
    max_us: _PULSE = 2500
    min_deg: Annotated[float, Field(ge=-360, le=360)] = 0.0
    max_deg: Annotated[float, Field(ge=-360, le=360)] = 180.0
    # Soft limits inside the servo's travel; commands are clamped to these.
    limit_min_deg: float | None = None
    limit_max_deg: float | None = None
    max_speed_deg_s: Annotated[float, Field(gt=0, le=2000)] = 90.0

    @model_validator(mode="after")
    def _ranges(self) -> JointConfig:
        if not self.min_us < self.max_us:
            raise ValueError(f"min_us {self.min_us} must be below max_us {self.max_us}")
        if not self.min_deg < self.max_deg:
            raise ValueError(f"min_deg {self.min_deg} must be below max_deg {self.max_deg}")
        lo = self.min_deg if self.limit_min_deg is None else self.limit_min_deg
        hi = self.max_deg if self.limit_max_deg is None else self.limit_max_deg
        if not self.min_deg <= lo < hi <= self.max_deg:
            raise ValueError(
                f"soft limits [{lo}, {hi}] must be increasing and inside the servo travel "
                f"[{self.min_deg}, {self.max_deg}]"
            )
        return self

    @property
    def soft_limits(self) -> tuple[float, float]:
        lo = self.min_deg if self.limit_min_deg is None else self.limit_min_deg
        hi = self.max_deg if self.limit_max_deg is None else self.limit_max_deg
        return lo, hi


class ArmActuatorsConfig(Strict):
    driver: Literal["pca9685_arm"] = "pca9685_arm"
    pca9685: PCA9685Config = PCA9685Config()
    joints: Annotated[list[JointConfig], Field(min_length=1, max_length=16)]
    # What a stop leaves the servos doing: hold their last position, or no pulse (limp).
    on_stop: Literal["hold", "release"] = "hold"

    @model_validator(mode="after")
    def _unique(self) -> ArmActuatorsConfig:
        names = [j.name for j in self.joints]
        chans = [j.channel for j in self.joints]
        if len(set(names)) != len(names):
            raise ValueError(f"joint names must be unique, got {names}")
        if len(set(chans)) != len(chans):
            raise ValueError(f"joint channels must be unique, got {chans}")
        return self


def _actuator_kind(value: Any) -> str:
    """Pick the schema by driver; a missing driver means the simulated car."""
    driver = value.get("driver", "sim") if isinstance(value, dict) else value.driver
    return "arm" if driver == "pca9685_arm" else "car"


class HardwareConfig(Strict):
    camera: CameraConfig | None = CameraConfig()
    depth: DepthConfig | None = None
    actuators: Annotated[
        Annotated[CarActuatorsConfig, Tag("car")] | Annotated[ArmActuatorsConfig, Tag("arm")],
        Discriminator(_actuator_kind),
    ] = CarActuatorsConfig()


# ----------------------------------------------------------------------------- sim


class SimConfig(Strict):
    """The built-in simulated robot (used by every ``driver: sim`` above)."""

    track: Annotated[str, Field(pattern=r"^[a-z0-9_-]{1,32}$")] = "oval"
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0
    lighting: Literal["day", "dusk", "overcast", "glare"] = "day"
    texture: Literal["asphalt", "concrete", "carpet"] = "asphalt"
    image_noise_std: Annotated[float, Field(ge=0, le=50)] = 2.0
    depth_noise_std_m: Annotated[float, Field(ge=0, le=1)] = 0.005
    steering_trim: Annotated[float, Field(ge=-0.5, le=0.5)] = 0.0
    max_speed_mps: Annotated[float, Field(gt=0, le=20)] = 3.0

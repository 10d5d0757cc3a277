"""The small device protocols every driver (real or simulated) implements.

The control loop only sees these types, so a driver can be swapped for the
simulated robot, or for a fake in tests, without the loop knowing.  Every frame
carries the monotonic time it was captured at: frame age and inter-sensor skew
are computed from it, never from the time the frame was read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np


class HardwareUnavailable(RuntimeError):
    """A driver was selected whose library or device is not present.

    The message names the driver, what is missing and how to install it, so that
    a robot builder can act on it without reading code.
    """


@dataclass(frozen=True, slots=True)
class Frame:
    """One RGB image: ``data`` is HxWx3 uint8, ``t_capture`` is time.monotonic() seconds."""

    data: np.ndarray
    t_capture: float
    seq: int
    sensor: str = "camera"


@dataclass(frozen=True, slots=True)
class DepthFrame:
    """One depth image aligned to the colour camera: HxW uint16, ``depth_scale`` metres per unit.

    A value of 0 means "no depth" (sky, out of range, invalid), as the RealSense SDK does.
    """

    data: np.ndarray
    t_capture: float
    seq: int
    depth_scale: float = 0.001
    sensor: str = "depth"


@dataclass(frozen=True, slots=True)
class ActionSpec:
    """Names, limits and the neutral value of an actuator vector.

    ``neutral`` entries that are NaN mean "hold the last commanded value" (an arm
    joint has no safe resting position it could jump to; a car's throttle does).
    """

    names: tuple[str, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]
    neutral: tuple[float, ...]
    units: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        n = len(self.names)
        if not (len(self.low) == len(self.high) == len(self.neutral) == n):
            raise ValueError("ActionSpec fields must all have one entry per action")
        for name, lo, hi in zip(self.names, self.low, self.high, strict=True):
            if not lo < hi:
                raise ValueError(f"action {name!r}: low {lo} must be below high {hi}")

    @property
    def size(self) -> int:
        return len(self.names)

    def neutral_array(self, hold: np.ndarray | None = None) -> np.ndarray:
        """The neutral vector; NaN ("hold") entries take ``hold`` when given, else stay NaN."""
        out = np.asarray(self.neutral, dtype=np.float64).copy()
        if hold is not None:
            mask = np.isnan(out)
            out[mask] = np.asarray(hold, dtype=np.float64)[mask]
        return out


CAR_ACTION_SPEC = ActionSpec(
    names=("steering", "throttle"),
    low=(-1.0, -1.0),
    high=(1.0, 1.0),
    neutral=(0.0, 0.0),
    units=("normalized", "normalized"),
)


@runtime_checkable
class Camera(Protocol):
    """A colour camera.  ``read`` blocks until the next frame (it runs on a capture thread)."""

    width: int
    height: int
    fps: float

    def start(self) -> None: ...

    def read(self, timeout: float = 1.0) -> Frame: ...

    def close(self) -> None: ...


@runtime_checkable
class DepthCamera(Protocol):
    """A depth camera whose frames are aligned to a colour camera's pixels."""

    width: int
    height: int
    fps: float

    def start(self) -> None: ...

    def read_depth(self, timeout: float = 1.0) -> DepthFrame: ...

    def close(self) -> None: ...


@runtime_checkable
class Actuators(Protocol):
    """Whatever turns an action vector into motion (PWM board, simulated car).

    ``write`` takes values already checked by the safety layer, in the units of
    ``action_spec``.  ``neutral`` must be safe to call at any time, from any exit
    path, more than once, and must not raise if the device is still reachable.
    """

    action_spec: ActionSpec

    def start(self) -> None: ...

    def write(self, action: np.ndarray) -> None: ...

    def neutral(self) -> None: ...

    def close(self) -> None: ...

"""Where the simulated camera sits and what each of its pixels looks at.

The world is a flat ground plane, so for a camera rigidly mounted on the car the
ground point (in the car's frame) and the depth seen by every pixel never change.
Computing them once here is what makes rendering a per-frame table lookup.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class CameraMount:
    """A wide-angle pinhole camera on the car's bumper, looking ahead and down."""

    hfov_deg: float = 110.0
    pitch_deg: float = 18.0
    height_m: float = 0.15
    #: Distance ahead of the rear axle (the car's reference point).
    forward_m: float = 0.30


@dataclass(frozen=True, slots=True)
class PinholeCamera:
    """Intrinsics for one resolution of a CameraMount (square pixels, centred principal point)."""

    width: int
    height: int
    mount: CameraMount

    @property
    def fx(self) -> float:
        return (self.width / 2.0) / math.tan(math.radians(self.mount.hfov_deg) / 2.0)

    @property
    def fy(self) -> float:
        return self.fx

    @property
    def cx(self) -> float:
        return (self.width - 1) / 2.0

    @property
    def cy(self) -> float:
        return (self.height - 1) / 2.0

    @property
    def horizon_row(self) -> float:
        """Image row (fractional) of the horizon; above it there is only sky."""
        return self.cy - self.fy * math.tan(math.radians(self.mount.pitch_deg))

    def rays(self) -> np.ndarray:
        """Unit-z ray of every pixel in the car frame (x forward, y left, z up): HxWx3 float64."""
        th = math.radians(self.mount.pitch_deg)
        u = (np.arange(self.width) - self.cx) / self.fx
        v = (np.arange(self.height) - self.cy) / self.fy
        du, dv = np.meshgrid(u, v)
        # Camera axes in the car frame:
        # right = -y, down = (-sin, 0, -cos), optical = (cos, 0, -sin).
        dx = -dv * math.sin(th) + math.cos(th)
        dy = -du
        dz = -dv * math.cos(th) - math.sin(th)
        return np.stack([dx, dy, dz], axis=-1)

    def project(self, direction: tuple[float, float, float]) -> tuple[float, float] | None:
        """Pixel (u, v) of a direction in the car frame, or None when it is behind the camera."""
        th = math.radians(self.mount.pitch_deg)
        x, y, z = direction
        zc = x * math.cos(th) - z * math.sin(th)
        if zc <= 1e-6:
            return None
        xc = -y
        yc = -x * math.sin(th) - z * math.cos(th)
        return self.cx + self.fx * xc / zc, self.cy + self.fy * yc / zc


@dataclass(frozen=True, slots=True)
class GroundView:
    """Per-pixel ground geometry for the rows below the horizon.

    ``first_row`` is the first image row whose pixels all see the ground;
    ``xy`` (rows x W x 2, float32) is the ground point of each pixel in the car
    frame relative to the rear axle; ``depth`` is its distance along the optical
    axis (metres, float64); ``footprint`` is the ground size of a pixel (metres)
    at the image centre column of each row, used to pick a texture mip level.
    """

    first_row: int
    xy: np.ndarray
    depth: np.ndarray
    footprint: np.ndarray


def ground_view(cam: PinholeCamera, max_range_m: float = 200.0) -> GroundView:
    """Intersect every pixel's ray with the ground plane (rays near the horizon are clipped)."""
    rays = cam.rays()
    first = max(0, math.floor(cam.horizon_row) + 1)
    r = rays[first:]
    down = -r[..., 2]
    h = cam.mount.height_m
    # Ray parameter t along the unit-z ray is exactly the optical-axis depth.
    t = np.where(down > 1e-9, h / np.maximum(down, 1e-9), np.inf)
    t = np.minimum(t, max_range_m)
    gx = cam.mount.forward_m + t * r[..., 0]
    gy = t * r[..., 1]
    xy = np.stack([gx, gy], axis=-1).astype(np.float32)
    c = cam.width // 2
    step_v = np.hypot(np.gradient(gx[:, c]), np.gradient(gy[:, c]))
    step_u = np.hypot(gx[:, c + 1] - gx[:, c], gy[:, c + 1] - gy[:, c])
    return GroundView(first_row=first, xy=xy, depth=t, footprint=np.maximum(step_u, step_v))

"""Per-frame rendering of the forward camera and its aligned depth image.

A frame is a handful of OpenCV calls on precomputed tables (see camera_model.py
and scene.py): an affine transform of the pixels' ground points into the
track's texture map, ``cv2.remap`` per mip band, a remap of the sky panorama,
and a slice of a precomputed noise bank.  OpenCV releases the GIL, so capture
threads render in parallel with the control loop, and a 640x480 frame takes a
few milliseconds on one core.

Rendering is a pure function of (configuration, pose, frame key): the noise of
a frame is chosen by its physics step, so the same run renders the same images.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np

from brain.config import SimConfig

from .camera_model import CameraMount, PinholeCamera, ground_view
from .car import CarState
from .scene import LIGHTINGS, ground_raster, sky_panorama
from .track import Track

NOISE_BANK = 4
NOISE_PAD = 32
FOG_START_M = 6.0
FOG_END_M = 40.0
#: Even the farthest ground keeps some of its colour, so no bright seam shows under the trees.
FOG_MAX = 0.6


@dataclass(frozen=True, slots=True)
class _Band:
    """Image rows [r0, r1) sampled from mip level ``level``."""

    r0: int
    r1: int
    level: int
    xy: np.ndarray  # (r1 - r0) x W x 2 float32, ground points in the car frame


def _noise_bank(seed: int, tag: int, shape: tuple[int, ...], std: float) -> np.ndarray | None:
    """A few padded Gaussian noise images (int16); a frame uses a random window of one."""
    if std <= 0:
        return None
    rng = np.random.default_rng([seed, tag, *shape])
    padded = (NOISE_BANK, shape[0] + NOISE_PAD, shape[1] + NOISE_PAD, *shape[2:])
    bank = rng.standard_normal(size=padded, dtype=np.float32) * np.float32(std)
    out: np.ndarray = np.clip(np.rint(bank), -32768, 32767).astype(np.int16)
    out.setflags(write=False)
    return out


def _noise_window(bank: np.ndarray, seed: int, tag: int, key: int, h: int, w: int) -> np.ndarray:
    rng = np.random.default_rng([seed, tag, key])
    k, dy, dx = rng.integers(0, (NOISE_BANK, NOISE_PAD + 1, NOISE_PAD + 1))
    return bank[k, dy : dy + h, dx : dx + w]


class RgbRenderer:
    """Renders the forward camera of one car on one track (thread-safe: read-only tables)."""

    def __init__(
        self,
        track: Track,
        cfg: SimConfig,
        width: int,
        height: int,
        mount: CameraMount | None = None,
    ) -> None:
        self.cam = PinholeCamera(width, height, mount or CameraMount())
        self.width, self.height = width, height
        self.seed = cfg.seed
        self.light = LIGHTINGS[cfg.lighting]
        # The sky and the ground are independent and their numpy/OpenCV work mostly runs
        # without the GIL: built side by side, the scene is ready sooner (the daemon's READY).
        with ThreadPoolExecutor(1, thread_name_prefix="sim-sky") as pool:
            pano = pool.submit(sky_panorama, cfg.lighting, cfg.seed)
            self.raster = ground_raster(track, cfg.texture, cfg.lighting, cfg.seed)
            self.pano = pano.result()
        gv = ground_view(self.cam)
        self.first_row = gv.first_row

        # Mip level per row: the coarsest level whose texels are still smaller than a pixel.
        ratio = gv.footprint / self.raster.res
        levels = np.clip(np.floor(np.log2(np.maximum(ratio, 1e-6))), 0, len(self.raster.levels) - 1)
        self.bands: list[_Band] = []
        start = 0
        for r in range(1, len(levels) + 1):
            if r == len(levels) or levels[r] != levels[start]:
                xy = np.ascontiguousarray(gv.xy[start:r])
                self.bands.append(
                    _Band(gv.first_row + start, gv.first_row + r, int(levels[start]), xy)
                )
                start = r

        # Fog: the far ground fades into the haze at the horizon.
        fog = np.clip((gv.depth - FOG_START_M) / (FOG_END_M - FOG_START_M), 0.0, 1.0) * FOG_MAX
        fog_rows = np.nonzero(fog.max(axis=1) > 0)[0]
        self.fog_r1 = gv.first_row + (int(fog_rows.max()) + 1 if len(fog_rows) else 0)
        self.fog = fog[: self.fog_r1 - gv.first_row, :, None].astype(np.float32)
        self.haze = np.asarray(self.light.haze, np.float32) * 255.0
        # The same blend as per-pixel weights for cv2.blendLinear, which runs
        # without the GIL (numpy float maths here held it for milliseconds and
        # delayed the control thread).
        n_fog = self.fog_r1 - gv.first_row
        self._fog_w = np.ascontiguousarray(self.fog[..., 0])
        self._img_w = np.ascontiguousarray(1.0 - self._fog_w)
        self._haze_img = np.empty((n_fog, width, 3), np.uint8)
        self._haze_img[:] = np.clip(np.round(self.haze), 0, 255).astype(np.uint8)

        # Sky: the panorama coordinates of each sky pixel for a car facing azimuth 0.
        rays = self.cam.rays()[: self.first_row]
        az = np.degrees(np.arctan2(rays[..., 1], rays[..., 0]))
        el = np.degrees(np.arctan2(rays[..., 2], np.hypot(rays[..., 0], rays[..., 1])))
        pano_w = self.pano.image.shape[1]
        self.sky_map_x = (az * (pano_w / 360.0)).astype(np.float32)
        self.sky_map_y = ((self.pano.el_max_deg - el) / self.pano.deg_per_row).astype(np.float32)

        self.bloom = self._bloom_image() if self.light.bloom > 0 else None
        self.noise = _noise_bank(cfg.seed, 1, (height, width, 3), cfg.image_noise_std)

    def _bloom_image(self) -> np.ndarray:
        """A veiling glare centred in a 2H x 2W canvas, added around the sun's pixel."""
        h, w = self.height, self.width
        yy, xx = np.mgrid[0 : 2 * h, 0 : 2 * w].astype(np.float32)
        r = np.hypot(xx - w, yy - h) / w
        glow = 0.55 * np.exp(-((r / 0.12) ** 2)) + 0.35 / (1.0 + (r / 0.25) ** 2)
        streak = (
            0.25 * np.exp(-(((yy - h) / (0.01 * w)) ** 2)) * np.exp(-np.abs(xx - w) / (0.5 * w))
        )
        amount = np.clip((glow + streak) * self.light.bloom, 0.0, 1.0)
        color = np.asarray(self.light.sun_color, np.float32) * 255.0
        image: np.ndarray = np.clip(amount[..., None] * color, 0, 255).astype(np.uint8)
        return image

    def render(self, state: CarState, frame_key: int = 0) -> np.ndarray:
        """The camera image of a car at ``state``: HxWx3 uint8 RGB."""
        h, w = self.height, self.width
        out = np.empty((h, w, 3), np.uint8)
        x, y, yaw = state.x, state.y, state.yaw
        c, s = math.cos(yaw), math.sin(yaw)

        if self.first_row > 0:
            pano = self.pano.image
            shift = (math.degrees(yaw) % 360.0) * (pano.shape[1] / 360.0)
            cv2.remap(
                pano,
                self.sky_map_x + np.float32(shift),
                self.sky_map_y,
                cv2.INTER_LINEAR,
                dst=out[: self.first_row],
                borderMode=cv2.BORDER_WRAP,
            )

        ras = self.raster
        for band in self.bands:
            k = band.level
            scale = 1.0 / (ras.res * 2**k)
            off = (2**k - 1) / 2 / 2**k
            m = np.array(
                [
                    [c * scale, -s * scale, (x - ras.x0) * scale - off],
                    [-s * scale, -c * scale, (ras.y1 - y) * scale - off],
                ],
                dtype=np.float32,
            )
            coords = cv2.transform(band.xy, m)
            cv2.remap(  # type: ignore[call-overload]  # map2=None: OpenCV's stubs want an array
                ras.levels[k],
                coords,
                None,
                cv2.INTER_LINEAR,
                dst=out[band.r0 : band.r1],
                borderMode=cv2.BORDER_REFLECT_101,
            )

        if self.fog_r1 > self.first_row:
            rows = out[self.first_row : self.fog_r1]
            cv2.blendLinear(rows, self._haze_img, self._img_w, self._fog_w, dst=rows)

        if self.bloom is not None:
            self._add_bloom(out, self.bloom, yaw)

        if self.noise is not None:
            noise = _noise_window(self.noise, self.seed, 1, frame_key, h, w)
            cv2.add(out, noise, dst=out, dtype=cv2.CV_8U)
        return out

    def _add_bloom(self, out: np.ndarray, bloom: np.ndarray, yaw: float) -> None:
        light = self.light
        az = math.radians(light.sun_azimuth_deg) - yaw
        el = math.radians(light.sun_elevation_deg)
        uv = self.cam.project(
            (math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el))
        )
        if uv is None:
            return
        h, w = self.height, self.width
        u = min(max(round(uv[0]), -w // 2), w + w // 2)
        v = min(max(round(uv[1]), -h // 2), h + h // 2)
        # The canvas centre (h, w) must land on the sun pixel (v, u); clip to the canvas.
        y0, x0 = h - v, w - u
        ya, yb = max(0, -y0), min(h, 2 * h - y0)
        xa, xb = max(0, -x0), min(w, 2 * w - x0)
        if ya >= yb or xa >= xb:
            return
        region = out[ya:yb, xa:xb]
        cv2.add(region, bloom[y0 + ya : y0 + yb, x0 + xa : x0 + xb], dst=region)


class DepthRenderer:
    """Depth of the flat ground along the optical axis, aligned to the colour camera's pixels.

    The ground never moves relative to a rigidly mounted camera, so the clean
    image is one constant table; only the sensor noise changes per frame.
    """

    def __init__(
        self,
        cfg: SimConfig,
        width: int,
        height: int,
        max_depth_m: float,
        mount: CameraMount | None = None,
    ) -> None:
        self.cam = PinholeCamera(width, height, mount or CameraMount())
        self.width, self.height = width, height
        self.seed = cfg.seed
        self.depth_scale = 0.001
        gv = ground_view(self.cam)
        z = np.where(gv.depth <= max_depth_m, np.rint(gv.depth / self.depth_scale), 0.0)
        clean = np.zeros((height, width), np.uint16)
        clean[gv.first_row :] = np.clip(z, 0, 65535).astype(np.uint16)
        clean.setflags(write=False)
        self.clean = clean
        self.valid = (clean > 0).astype(np.uint8)
        std_units = cfg.depth_noise_std_m / self.depth_scale
        self.noise = _noise_bank(cfg.seed, 2, (height, width), std_units)

    def render(self, frame_key: int = 0) -> np.ndarray:
        """HxW uint16 depth in millimetres; 0 where nothing is in range (sky, far ground)."""
        if self.noise is None:
            return self.clean.copy()
        out = np.zeros((self.height, self.width), np.uint16)
        noise = _noise_window(self.noise, self.seed, 2, frame_key, self.height, self.width)
        cv2.add(self.clean, noise, dst=out, mask=self.valid, dtype=cv2.CV_16U)
        return out

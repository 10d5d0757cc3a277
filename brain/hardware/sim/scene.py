"""What the world looks like: the track painted on the ground, the sky, the light.

Everything here is built once per (track, look, seed) and cached, so each frame
only has to sample these images.  The ground is a top-down texture map of the
whole track (plus a margin of grass) with a mip pyramid, so far-away ground is
sampled from a blurred level instead of shimmering; the sky is a 360 degree
panorama sampled by azimuth, so it turns as the car turns.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import cv2
import numpy as np

from .track import Track

RASTER_RES_M = 0.015
RASTER_MARGIN_M = 5.0
MIP_LEVELS = 6
PANO_WIDTH = 2048
PANO_ELEV_MAX_DEG = 60.0
PANO_ELEV_MIN_DEG = -5.0

_RGB = tuple[float, float, float]


@dataclass(frozen=True, slots=True)
class Lighting:
    """One look of the scene; colours are RGB in [0, 1]."""

    sky_top: _RGB
    sky_horizon: _RGB
    haze: _RGB
    ground_gain: _RGB
    ground_offset: float
    clouds: float
    #: Sun position (world azimuth, counter-clockwise from +x) and look; radius 0 = hidden.
    sun_azimuth_deg: float = 0.0
    sun_elevation_deg: float = 40.0
    sun_radius_deg: float = 0.0
    sun_color: _RGB = (1.0, 1.0, 0.95)
    #: Screen-space bloom when the sun is in or near the view (0 = none).
    bloom: float = 0.0


LIGHTINGS: dict[str, Lighting] = {
    "day": Lighting(
        sky_top=(0.25, 0.47, 0.85),
        sky_horizon=(0.72, 0.82, 0.93),
        haze=(0.70, 0.76, 0.80),
        ground_gain=(1.0, 1.0, 1.0),
        ground_offset=0.0,
        clouds=0.25,
        sun_azimuth_deg=120.0,
        sun_elevation_deg=50.0,
        sun_radius_deg=1.5,
    ),
    "dusk": Lighting(
        sky_top=(0.12, 0.14, 0.35),
        sky_horizon=(0.95, 0.55, 0.30),
        haze=(0.55, 0.38, 0.30),
        ground_gain=(0.62, 0.48, 0.42),
        ground_offset=0.0,
        clouds=0.15,
        sun_azimuth_deg=200.0,
        sun_elevation_deg=3.0,
        sun_radius_deg=2.0,
        sun_color=(1.0, 0.62, 0.30),
        bloom=0.35,
    ),
    "overcast": Lighting(
        sky_top=(0.62, 0.64, 0.67),
        sky_horizon=(0.80, 0.81, 0.82),
        haze=(0.74, 0.75, 0.76),
        ground_gain=(0.80, 0.82, 0.86),
        ground_offset=0.04,
        clouds=0.6,
    ),
    "glare": Lighting(
        sky_top=(0.55, 0.70, 0.95),
        sky_horizon=(0.95, 0.96, 0.97),
        haze=(0.92, 0.92, 0.90),
        ground_gain=(1.08, 1.08, 1.05),
        ground_offset=0.12,
        clouds=0.1,
        sun_azimuth_deg=20.0,
        sun_elevation_deg=9.0,
        sun_radius_deg=2.5,
        sun_color=(1.0, 0.98, 0.90),
        bloom=1.0,
    ),
}


@dataclass(frozen=True, slots=True)
class GroundRaster:
    """A top-down picture of the ground; ``levels[k]`` has 2**k times coarser pixels.

    Level-0 pixel (col, row) has its centre at world (x0 + col*res, y1 - row*res).
    """

    levels: tuple[np.ndarray, ...]
    x0: float
    y1: float
    res: float


@dataclass(frozen=True, slots=True)
class SkyPanorama:
    """360 degree sky: column c looks at azimuth 2*pi*c/width, row r at el_max - r*deg_per_row."""

    image: np.ndarray
    el_max_deg: float
    deg_per_row: float


# ----------------------------------------------------------------------------- noise helpers


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell_px: float) -> np.ndarray:
    """Value noise in [-1, 1] with features about ``cell_px`` pixels wide (float32)."""
    gh = max(2, math.ceil(h / cell_px) + 2)
    gw = max(2, math.ceil(w / cell_px) + 2)
    grid = rng.uniform(-1.0, 1.0, size=(gh, gw)).astype(np.float32)
    big = cv2.resize(
        grid, (round(gw * cell_px), round(gh * cell_px)), interpolation=cv2.INTER_CUBIC
    )
    return np.clip(big[:h, :w], -1.0, 1.0)


def _periodic_noise(rng: np.random.Generator, h: int, w: int, cell_px: float) -> np.ndarray:
    """Value noise like _smooth_noise whose left and right edges meet seamlessly."""
    gw = max(4, round(w / cell_px))
    cell = w / gw
    gh = max(2, math.ceil(h / cell) + 2)
    grid = rng.uniform(-1.0, 1.0, size=(gh, gw)).astype(np.float32)
    ext = np.concatenate([grid[:, -2:], grid, grid[:, :3]], axis=1)
    big = cv2.resize(ext, (round((gw + 5) * cell), round(gh * cell)), interpolation=cv2.INTER_CUBIC)
    x0 = round(2 * cell)
    return np.clip(big[:h, x0 : x0 + w], -1.0, 1.0)


def _pixel_noise(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return rng.standard_normal(size=(h, w), dtype=np.float32)


def _mix(img: np.ndarray, color: np.ndarray | _RGB, alpha: np.ndarray) -> None:
    """In place: img = img + (color - img) * alpha, where alpha (HxW, [0, 1]) is non-zero.

    ``color`` is an RGB triple or an image like ``img``.  Paint masks cover a
    small part of the map, so only their pixels are touched.
    """
    col = np.asarray(color, dtype=np.float32)
    if np.count_nonzero(alpha) > alpha.size // 16:
        img += (col - img) * alpha[..., None]
        return
    flat = img.reshape(-1, 3)
    idx = np.flatnonzero(alpha)
    a = alpha.reshape(-1)[idx, None]
    src = col.reshape(-1, 3)[idx] if col.ndim == 3 else col
    flat[idx] += (src - flat[idx]) * a


# ----------------------------------------------------------------------------- ground


def _surface(rng: np.random.Generator, texture: str, h: int, w: int, res: float) -> np.ndarray:
    """The road material before any paint, HxWx3 float32 in [0, 1]."""
    fine = _pixel_noise(rng, h, w)
    if texture == "asphalt":
        base = np.array([0.30, 0.30, 0.32], np.float32)
        shade = 1.0 + 0.07 * fine + 0.06 * _smooth_noise(rng, h, w, 0.8 / res)
    elif texture == "concrete":
        base = np.array([0.64, 0.62, 0.58], np.float32)
        shade = 1.0 + 0.03 * fine + 0.05 * _smooth_noise(rng, h, w, 0.15 / res)
        shade += 0.04 * _smooth_noise(rng, h, w, 1.5 / res)
    elif texture == "carpet":
        base = np.array([0.36, 0.36, 0.44], np.float32)
        # Fibres: noise smeared along one direction, like a loop-pile carpet's rows.
        fibres = cv2.blur(fine, (5, 1)) * 1.8
        shade = 1.0 + 0.08 * fibres + 0.05 * fine + 0.03 * _smooth_noise(rng, h, w, 0.5 / res)
    else:
        raise ValueError(f"unknown texture {texture!r}; valid: asphalt, concrete, carpet")
    return shade[..., None] * base


def _grass(rng: np.random.Generator, h: int, w: int, res: float) -> np.ndarray:
    base = np.array([0.20, 0.40, 0.13], np.float32)
    dry = np.array([0.45, 0.42, 0.24], np.float32)
    img = np.empty((h, w, 3), np.float32)
    img[:] = base
    shade = (
        1.0
        + 0.15 * _smooth_noise(rng, h, w, 1.2 / res)
        + 0.08 * _smooth_noise(rng, h, w, 0.12 / res)
    )
    shade += 0.12 * _pixel_noise(rng, h, w)
    img *= shade[..., None]
    patches = np.clip((_smooth_noise(rng, h, w, 2.5 / res) - 0.35) * 2.5, 0.0, 0.7)
    _mix(img, dry, patches)
    return img


def _to_px(pts: np.ndarray, x0: float, y1: float, res: float) -> np.ndarray:
    """World metres -> fixed-point raster pixels for cv2 drawing with shift=4."""
    px = np.stack([(pts[:, 0] - x0) / res, (y1 - pts[:, 1]) / res], axis=1)
    return np.round(px * 16).astype(np.int32)


def _mask(h: int, w: int) -> np.ndarray:
    return np.zeros((h, w), np.uint8)


def _paint(track: Track, h: int, w: int, x0: float, y1: float, res: float) -> dict[str, np.ndarray]:
    """Anti-aliased coverage masks (float32 in [0, 1]) of the road and its markings."""
    pts = track.points
    normal = np.stack([-np.sin(track.heading), np.cos(track.heading)], axis=1)
    aa = cv2.LINE_AA

    def px(p: np.ndarray) -> np.ndarray:
        return _to_px(p, x0, y1, res)

    road = _mask(h, w)
    cv2.polylines(road, [px(pts)], True, (255,), max(1, round(track.width / res)), aa, 4)

    line_px = max(2, round(0.05 / res))
    edges = _mask(h, w)
    inset = track.half_width - 0.045
    for side in (1.0, -1.0):
        cv2.polylines(edges, [px(pts + side * inset * normal)], True, (255,), line_px, aa, 4)

    dash_len, gap_len = 0.3, 0.3
    per = round((dash_len + gap_len) / track.spacing)
    on = round(dash_len / track.spacing)
    dashes = [px(pts[i : i + on + 1]) for i in range(0, track.n - on, per)]
    centre = _mask(h, w)
    cv2.polylines(centre, dashes, False, (255,), line_px, aa, 4)

    start = _mask(h, w)
    across = np.stack(
        [pts[0] + track.half_width * normal[0], pts[0] - track.half_width * normal[0]]
    )
    cv2.polylines(start, [px(across)], False, (255,), max(2, round(0.08 / res)), aa, 4)

    out = {"road": road, "edges": edges, "centre": centre, "start": start}
    return {k: v.astype(np.float32) * (1.0 / 255.0) for k, v in out.items()}


def _joints(track: Track, h: int, w: int, x0: float, y1: float, res: float) -> np.ndarray:
    """Expansion joints across a concrete road every 1.2 m."""
    normal = np.stack([-np.sin(track.heading), np.cos(track.heading)], axis=1)
    every = max(1, round(1.2 / track.spacing))
    lines = []
    for i in range(0, track.n, every):
        seg = np.stack(
            [
                track.points[i] + track.half_width * normal[i],
                track.points[i] - track.half_width * normal[i],
            ]
        )
        lines.append(_to_px(seg, x0, y1, res))
    m = _mask(h, w)
    cv2.polylines(m, lines, False, (255,), 1, cv2.LINE_AA, 4)
    return m.astype(np.float32) * (1.0 / 255.0)


@functools.lru_cache(maxsize=6)
def ground_raster(track: Track, texture: str, lighting: str, seed: int) -> GroundRaster:
    """Paint the track onto grass and grade it for the lighting; cached per look."""
    light = LIGHTINGS[lighting]
    res = RASTER_RES_M
    xmin, ymin, xmax, ymax = track.bounds(RASTER_MARGIN_M)
    # Round the size up to a multiple of 2**(levels-1) so that every mip level halves exactly.
    q = 2 ** (MIP_LEVELS - 1)
    w = math.ceil((xmax - xmin) / res / q) * q
    h = math.ceil((ymax - ymin) / res / q) * q
    x0, y1 = xmin, ymax
    rng = np.random.default_rng([seed, 0x6A0D])

    img = _grass(rng, h, w, res)
    masks = _paint(track, h, w, x0, y1, res)
    surface = _surface(rng, texture, h, w, res)
    if texture == "concrete":
        surface *= (1.0 - 0.45 * _joints(track, h, w, x0, y1, res))[..., None]
    road = masks["road"]
    _mix(img, surface, road)
    wear = 0.85 + 0.15 * np.clip(_smooth_noise(rng, h, w, 0.6 / res) + 0.6, 0.0, 1.0)
    _mix(img, (0.92, 0.92, 0.89), masks["edges"] * wear)
    _mix(img, (0.93, 0.78, 0.18), masks["centre"] * wear)
    _mix(img, (0.95, 0.95, 0.95), masks["start"] * road)

    img *= np.asarray(light.ground_gain, np.float32)
    img += light.ground_offset
    level0 = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    levels: list[np.ndarray] = [level0]
    for _ in range(1, MIP_LEVELS):
        levels.append(cv2.pyrDown(levels[-1]))
    for lv in levels:
        lv.setflags(write=False)
    return GroundRaster(levels=tuple(levels), x0=x0, y1=y1, res=res)


# ----------------------------------------------------------------------------- sky


def _periodic_profile(rng: np.random.Generator, n: int, harmonics: int) -> np.ndarray:
    """A random smooth function of azimuth that wraps around seamlessly, in [-1, 1]."""
    az = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
    out = np.zeros(n)
    for k in range(1, harmonics + 1):
        out += rng.normal() / k**0.8 * np.cos(k * az + rng.uniform(0, 2 * math.pi))
    return out / max(1e-9, float(np.abs(out).max()))


@functools.lru_cache(maxsize=4)
def sky_panorama(lighting: str, seed: int) -> SkyPanorama:
    """Sky gradient, clouds, a distant tree line and the sun, around 360 degrees."""
    light = LIGHTINGS[lighting]
    rng = np.random.default_rng([seed, 0x5C1])
    w = PANO_WIDTH
    dpr = 360.0 / w
    h = math.ceil((PANO_ELEV_MAX_DEG - PANO_ELEV_MIN_DEG) / dpr)
    el = PANO_ELEV_MAX_DEG - np.arange(h) * dpr  # per row
    az = np.arange(w) * dpr  # per column, degrees

    t = np.clip(el / 35.0, 0.0, 1.0) ** 0.6
    top = np.asarray(light.sky_top, np.float32)
    hor = np.asarray(light.sky_horizon, np.float32)
    col = hor[None, :] + (top - hor)[None, :] * t[:, None].astype(np.float32)
    img = np.repeat(col[:, None, :], w, axis=1).astype(np.float32)

    if light.clouds > 0:
        cn = _periodic_noise(rng, h, w, 48.0)
        cover = np.clip(cn * 1.2 + light.clouds - 0.3, 0.0, 1.0) * (el[:, None] > 2.0)
        _mix(img, np.clip(hor * 1.05 + 0.05, 0, 1), cover.astype(np.float32) * 0.8)

    below = el < 0.0
    img[below] = np.asarray(light.haze, np.float32)

    # Distant trees: a ragged silhouette 0.5-3.5 degrees high, hazy with distance.
    height = 2.0 + 1.5 * _periodic_profile(rng, w, 40)
    ragged = 0.3 * rng.standard_normal(w)
    height = height + cv2.blur(ragged.reshape(1, -1), (3, 1)).ravel()
    tree = (el[:, None] <= height[None, :]).astype(np.float32)
    tree_col = np.asarray(light.haze, np.float32) * 0.45 + np.array(
        [0.06, 0.16, 0.06], np.float32
    ) * np.asarray(light.ground_gain, np.float32)
    _mix(img, tree_col, cv2.GaussianBlur(tree, (3, 3), 0))

    if light.sun_radius_deg > 0:
        daz = (az[None, :] - light.sun_azimuth_deg + 180.0) % 360.0 - 180.0
        dist = np.hypot(
            daz * math.cos(math.radians(light.sun_elevation_deg)),
            el[:, None] - light.sun_elevation_deg,
        )
        disc = np.clip(light.sun_radius_deg + 0.5 - dist, 0.0, 1.0)
        halo = np.exp(-((dist / (light.sun_radius_deg * 6)) ** 2)) * 0.6
        sun = np.asarray(light.sun_color, np.float32)
        _mix(img, sun, np.clip(disc + halo, 0.0, 1.0).astype(np.float32))

    out = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    out.setflags(write=False)
    return SkyPanorama(image=out, el_max_deg=PANO_ELEV_MAX_DEG, deg_per_row=dpr)

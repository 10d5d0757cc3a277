"""Closed race tracks for the simulated car, at the scale of a 1/10 car.

A track is only a closed centreline and a road width.  Everything else (the
camera texture, the expert's speed plan, cross-track error) is derived from it,
so adding a layout is adding a few lines of turtle commands here.

Named layouts are built from straights and arcs ("turtle" segments) whose
curvature is then eased with a short moving average, so that the steering a car
needs changes smoothly instead of jumping at each arc.  ``random-<n>`` tracks are
smooth star-shaped loops drawn from ``np.random.default_rng(n)`` and rejected
until they are drivable (curvature, length, the road never touching itself).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

ROAD_WIDTH_M = 0.9
SPACING_M = 0.03
#: Tightest centreline radius any layout may have.  The car turns down to
#: 0.26 m / tan(25 deg) = 0.56 m; twice that leaves room for lag and error.
MIN_RADIUS_M = 1.15
MIN_LENGTH_M = 15.0
MAX_LENGTH_M = 40.0
#: Two stretches of road further apart than this along the track must keep this
#: much distance between their centrelines (road width plus a strip of grass).
_FOLD_ARC_M = 3.0
_FOLD_GAP_M = ROAD_WIDTH_M + 0.6
_EASE_M = 0.5

TRACK_NAMES: tuple[str, ...] = ("oval", "kidney", "hairpin", "chicane", "snake")
_RANDOM_RE = re.compile(r"^random-(\d{1,10})$")


@dataclass(frozen=True, eq=False)
class Track:
    """A closed centreline sampled every ``spacing`` metres, counter-clockwise.

    ``points[i]`` lies at arc length ``s[i] = i * spacing``; the segment from the
    last point back to the first closes the loop, so ``length = n * spacing``.
    ``heading`` is the tangent direction (rad) and ``curvature`` is signed
    (positive turns left), both per point.
    """

    name: str
    points: np.ndarray
    width: float
    spacing: float
    heading: np.ndarray = field(repr=False)
    curvature: np.ndarray = field(repr=False)

    @property
    def n(self) -> int:
        return len(self.points)

    @property
    def length(self) -> float:
        return float(self.n * self.spacing)

    @property
    def s(self) -> np.ndarray:
        return np.arange(self.n) * self.spacing

    @property
    def half_width(self) -> float:
        return self.width / 2.0

    def bounds(self, margin: float = 0.0) -> tuple[float, float, float, float]:
        """(xmin, ymin, xmax, ymax) of the centreline, grown by ``margin``."""
        lo = self.points.min(axis=0) - margin
        hi = self.points.max(axis=0) + margin
        return float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])

    def point_at(self, s: float) -> tuple[float, float]:
        """The centreline point at arc length ``s`` (wrapped), linearly interpolated."""
        u = (s % self.length) / self.spacing
        i = int(u)
        f = u - i
        a = self.points[i % self.n]
        b = self.points[(i + 1) % self.n]
        return float(a[0] + f * (b[0] - a[0])), float(a[1] + f * (b[1] - a[1]))

    def nearest_index(self, x: float, y: float) -> int:
        """Global nearest vertex; O(n), used only when there is no previous estimate."""
        d = (self.points[:, 0] - x) ** 2 + (self.points[:, 1] - y) ** 2
        return int(np.argmin(d))

    def project(self, x: float, y: float, hint: int | None = None) -> tuple[int, float, float]:
        """Project a point onto the centreline: (segment index, arc length, signed offset).

        The offset is positive to the left of the driving direction.  With a
        ``hint`` (the index found last time) the search walks downhill from it,
        which is O(1) per call for a car that moves less than a few samples
        between calls, and never jumps to a neighbouring stretch of road the way
        a global search would on a hairpin.
        """
        pts = self.points
        n = self.n
        i = self.nearest_index(x, y) if hint is None else hint % n

        def d2(k: int) -> float:
            p = pts[k % n]
            return float((p[0] - x) ** 2 + (p[1] - y) ** 2)

        best = d2(i)
        for _ in range(n):
            fwd = d2(i + 1)
            if fwd < best:
                i, best = (i + 1) % n, fwd
                continue
            back = d2(i - 1)
            if back < best:
                i, best = (i - 1) % n, back
                continue
            break
        # The foot of the perpendicular lies on one of the two segments at vertex i.
        out = (i, float(i * self.spacing), 0.0)
        best_d2 = math.inf
        for k in (i - 1, i):
            a = pts[k % n]
            b = pts[(k + 1) % n]
            ex, ey = b[0] - a[0], b[1] - a[1]
            px, py = x - a[0], y - a[1]
            t = min(1.0, max(0.0, (px * ex + py * ey) / (ex * ex + ey * ey)))
            qx, qy = px - t * ex, py - t * ey
            dd = qx * qx + qy * qy
            if dd < best_d2:
                best_d2 = dd
                side = 1.0 if ex * py - ey * px >= 0.0 else -1.0
                s = ((k % n) + t) * self.spacing
                out = (k % n, float(s % self.length), side * math.sqrt(dd))
        return out


# ----------------------------------------------------------------------------- building

_Seg = tuple[
    str, float, float
]  # ("S", length, 0) or ("L"/"R", radius, degrees); "S" length -1: auto


def _turtle(segments: Sequence[_Seg], step: float = 0.005) -> np.ndarray:
    """Curvature as a function of arc length, sampled every ``step`` metres."""
    kappa: list[np.ndarray] = []
    for kind, a, b in segments:
        if kind == "S":
            kappa.append(np.zeros(max(1, round(a / step))))
        else:
            sign = 1.0 if kind == "L" else -1.0
            arc = a * math.radians(b)
            kappa.append(np.full(max(1, round(arc / step)), sign / a))
    return np.concatenate(kappa)


def _integrate(kappa: np.ndarray, step: float) -> np.ndarray:
    heading = np.concatenate(([0.0], np.cumsum(kappa[:-1]) * step))
    heading += 0.5 * kappa * step  # midpoint rule
    xy = np.stack([np.cos(heading), np.sin(heading)], axis=1) * step
    return np.concatenate([[[0.0, 0.0]], np.cumsum(xy, axis=0)])


def _close_auto(segments: list[_Seg], step: float) -> list[_Seg]:
    """Give the one straight marked with length -1 the length that closes the loop."""
    auto = [i for i, seg in enumerate(segments) if seg[0] == "S" and seg[1] < 0]
    if not auto:
        return segments
    (idx,) = auto
    trial = [(k, 0.0 if i == idx else a, b) for i, (k, a, b) in enumerate(segments)]
    kappa = _turtle(trial, step)
    head_before = float(_turtle(trial[:idx], step).sum() * step) if idx else 0.0
    end = _integrate(kappa, step)[-1]
    direction = np.array([math.cos(head_before), math.sin(head_before)])
    length = float(-end @ direction)
    if length <= 0:
        raise AssertionError("auto straight would be negative; fix the layout")
    return [("S", length, 0.0) if i == idx else seg for i, seg in enumerate(segments)]


def _from_curvature(kappa: np.ndarray, step: float) -> np.ndarray:
    """Integrate a closed curvature profile into a closed polyline (last point dropped)."""
    win = max(1, round(_EASE_M / step))
    if win > 1:
        ker = np.ones(win) / win
        padded = np.concatenate([kappa[-win:], kappa, kappa[:win]])
        kappa = np.convolve(padded, ker, mode="same")[win:-win]
    # Make the total turning exactly one left-hand revolution.
    kappa = kappa * (2 * math.pi / (kappa.sum() * step))
    pts = _integrate(kappa, step)
    gap = pts[-1] - pts[0]
    ramp = np.linspace(0.0, 1.0, len(pts))[:, None]
    pts = pts - ramp * gap  # spread the (tiny) closure error along the loop
    closed: np.ndarray = pts[:-1]
    return closed


def _resample(dense: np.ndarray, spacing: float) -> np.ndarray:
    """Resample a closed polyline at equal arc length close to ``spacing``."""
    closed = np.vstack([dense, dense[:1]])
    seg = np.hypot(*np.diff(closed, axis=0).T)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    total = cum[-1]
    n = max(8, round(total / spacing))
    s = np.arange(n) * (total / n)
    return np.stack([np.interp(s, cum, closed[:, 0]), np.interp(s, cum, closed[:, 1])], axis=1)


def _finish(name: str, dense: np.ndarray) -> Track:
    pts = _resample(dense, SPACING_M)
    # One more pass: resampling chords shorten the loop slightly, so resample
    # the resampled polyline to make the spacing uniform to rounding error.
    pts = _resample(pts, SPACING_M)
    pts -= pts.mean(axis=0)
    nxt = np.roll(pts, -1, axis=0)
    prv = np.roll(pts, 1, axis=0)
    heading = np.arctan2(nxt[:, 1] - prv[:, 1], nxt[:, 0] - prv[:, 0])
    dh = np.angle(np.exp(1j * (np.roll(heading, -1) - np.roll(heading, 1))))
    closed = np.vstack([pts, pts[:1]])
    spacing = float(np.hypot(*np.diff(closed, axis=0).T).mean())
    curvature = dh / (2 * spacing)
    # Smooth the numerical noise of the finite difference (a few samples).
    curvature = np.convolve(
        np.concatenate([curvature[-3:], curvature, curvature[:3]]), np.ones(7) / 7, mode="same"
    )[3:-3]
    for arr in (pts, heading, curvature):
        arr.setflags(write=False)
    return Track(
        name=name,
        points=pts,
        width=ROAD_WIDTH_M,
        spacing=spacing,
        heading=heading,
        curvature=curvature,
    )


def _from_segments(name: str, segments: list[_Seg]) -> Track:
    step = 0.005
    segments = _close_auto(segments, step)
    return _finish(name, _from_curvature(_turtle(segments, step), step))


def _oval() -> list[_Seg]:
    return [("S", 6.0, 0), ("L", 2.4, 180), ("S", 6.0, 0), ("L", 2.4, 180)]


def _kidney() -> list[_Seg]:
    # Round ends and a straight bottom; the top is pulled in by a right-hand bend.
    return [
        ("S", -1, 0),
        ("L", 2.4, 180),
        ("S", 0.6, 0),
        ("L", 2.2, 45),
        ("R", 2.2, 90),
        ("L", 2.2, 45),
        ("S", 0.6, 0),
        ("L", 2.4, 180),
    ]


def _hairpin() -> list[_Seg]:
    # A switchback: three 180 degree hairpins stacked up, one wide sweep back down.
    r = 1.2
    return [
        ("S", 4.5, 0),
        ("L", r, 180),
        ("S", 2.0, 0),
        ("R", r, 180),
        ("S", 2.0, 0),
        ("L", r, 180),
        ("S", 4.5, 0),
        ("L", 3 * r, 180),
    ]


def _chicane() -> list[_Seg]:
    r, a = 1.4, 45
    return [
        ("S", 2.0, 0),
        ("L", r, a),
        ("R", r, 2 * a),
        ("L", r, a),
        ("S", 2.0, 0),
        ("L", 2.4, 180),
        ("S", 2.0, 0),
        ("R", r, a),
        ("L", r, 2 * a),
        ("R", r, a),
        ("S", 2.0, 0),
        ("L", 2.4, 180),
    ]


def _snake() -> list[_Seg]:
    r, a = 1.5, 50
    return [
        ("S", 1.0, 0),
        ("L", r, a),
        ("R", r, 2 * a),
        ("L", r, 2 * a),
        ("R", r, 2 * a),
        ("L", r, a),
        ("S", 1.0, 0),
        ("L", 2.4, 180),
        ("S", -1, 0),
        ("L", 2.4, 180),
    ]


_LAYOUTS: dict[str, Callable[[], list[_Seg]]] = {
    "oval": _oval,
    "kidney": _kidney,
    "hairpin": _hairpin,
    "chicane": _chicane,
    "snake": _snake,
}
assert tuple(_LAYOUTS) == TRACK_NAMES


def _random_dense(rng: np.random.Generator) -> np.ndarray:
    """A smooth star-shaped loop r(theta) with a few random harmonics (unit scale)."""
    theta = np.linspace(0.0, 2 * math.pi, 4096, endpoint=False)
    r = np.ones_like(theta)
    for k in range(2, 6):
        amp = rng.uniform(0.0, 0.32 / k)
        r += amp * np.cos(k * theta + rng.uniform(0, 2 * math.pi))
    stretch = rng.uniform(1.0, 1.6)
    xy = np.stack([r * np.cos(theta) * stretch, r * np.sin(theta)], axis=1)
    return xy


def _radius_profile(dense: np.ndarray) -> tuple[float, float]:
    """(tightest radius, length) of a closed polyline."""
    nxt = np.roll(dense, -1, axis=0)
    prv = np.roll(dense, 1, axis=0)
    a = np.hypot(*(dense - prv).T)
    b = np.hypot(*(nxt - dense).T)
    c = np.hypot(*(nxt - prv).T)
    cross = np.abs(
        (dense - prv)[:, 0] * (nxt - dense)[:, 1] - (dense - prv)[:, 1] * (nxt - dense)[:, 0]
    )
    kappa = 2 * cross / np.maximum(a * b * c, 1e-12)
    return float(1.0 / kappa.max()), float(b.sum())


def _road_folds(track: Track) -> bool:
    """Whether two far-apart stretches of the track come closer than one road plus grass."""
    step = max(1, round(0.1 / track.spacing))
    pts = track.points[::step]
    s = track.s[::step]
    d = np.hypot(pts[:, None, 0] - pts[None, :, 0], pts[:, None, 1] - pts[None, :, 1])
    ds = np.abs(s[:, None] - s[None, :])
    ds = np.minimum(ds, track.length - ds)
    return bool(np.any((ds > _FOLD_ARC_M) & (d < _FOLD_GAP_M)))


def _random_track(name: str, seed: int) -> Track:
    rng = np.random.default_rng(seed)
    for _ in range(200):
        dense = _random_dense(rng)
        rmin, length = _radius_profile(dense)
        target_len = rng.uniform(20.0, 36.0)
        scale = max(target_len / length, (MIN_RADIUS_M + 0.25) / rmin)
        if length * scale > MAX_LENGTH_M:
            continue
        track = _finish(name, dense * scale)
        if float(np.abs(track.curvature).max()) > 1.0 / MIN_RADIUS_M:
            continue
        if _road_folds(track):
            continue
        return track
    raise RuntimeError(f"could not generate a drivable track for {name!r}")  # pragma: no cover


@functools.lru_cache(maxsize=32)
def make_track(name: str) -> Track:
    """Build a layout by name: one of TRACK_NAMES, or ``random-<seed>``.

    Building is deterministic, so the (immutable) result is cached: every world
    on one layout shares one Track, and with it the cached texture maps.
    """
    if name in _LAYOUTS:
        return _from_segments(name, _LAYOUTS[name]())
    m = _RANDOM_RE.match(name)
    if m:
        return _random_track(name, int(m.group(1)))
    valid = ", ".join(TRACK_NAMES)
    raise ValueError(
        f"unknown track {name!r}; valid tracks are: {valid}, or random-<seed> (e.g. random-7)"
    )

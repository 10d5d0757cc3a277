"""How well the car is driving: cross-track error, progress, laps, off-track events.

These numbers judge a policy in closed loop, so they are computed at every
physics substep (not at every ``step`` call) and so do not depend on the rate at
which a caller steps the world.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .track import Track


@dataclass(slots=True)
class TrackMetrics:
    """Running totals of one drive since the last reset."""

    cte_m: float = 0.0
    sum_abs_cte: float = 0.0
    max_abs_cte_m: float = 0.0
    samples: int = 0
    off_track: bool = False
    off_track_events: int = 0
    off_track_time_s: float = 0.0
    progress_m: float = 0.0
    distance_m: float = 0.0
    #: Simulated time at which each lap was completed.
    lap_end_s: list[float] = field(default_factory=list)


class TrackTracker:
    """Follows the car along the centreline and keeps TrackMetrics up to date.

    Progress is the arc length driven along the centreline, unwrapped across the
    start line (it goes down when the car reverses), so laps are simply how many
    track lengths of progress have been made.
    """

    def __init__(self, track: Track) -> None:
        self.track = track
        self.index = 0
        self.s = 0.0
        self.m = TrackMetrics()

    def reset(self, x: float, y: float) -> None:
        self.index, self.s, cte = self.track.project(x, y)
        self.m = TrackMetrics(cte_m=cte)
        self.m.off_track = abs(cte) > self.track.half_width

    def update(self, x: float, y: float, moved_m: float, dt: float, t: float) -> None:
        tr = self.track
        self.index, s, cte = tr.project(x, y, self.index)
        ds = s - self.s
        half = 0.5 * tr.length
        if ds > half:
            ds -= tr.length
        elif ds < -half:
            ds += tr.length
        self.s = s
        m = self.m
        m.progress_m += ds
        m.distance_m += moved_m
        m.cte_m = cte
        a = abs(cte)
        m.sum_abs_cte += a
        m.samples += 1
        m.max_abs_cte_m = max(m.max_abs_cte_m, a)
        off = a > tr.half_width
        if off and not m.off_track:
            m.off_track_events += 1
        m.off_track = off
        if off:
            m.off_track_time_s += dt
        while m.progress_m >= (len(m.lap_end_s) + 1) * tr.length:
            m.lap_end_s.append(t)

    @property
    def laps(self) -> int:
        return max(0, math.floor(self.m.progress_m / self.track.length))

    def as_dict(self, speed: float, t: float) -> dict[str, float | int | bool | str | list[float]]:
        m = self.m
        return {
            "track": self.track.name,
            "track_length_m": self.track.length,
            "cte_m": m.cte_m,
            "mean_abs_cte_m": m.sum_abs_cte / m.samples if m.samples else abs(m.cte_m),
            "max_abs_cte_m": m.max_abs_cte_m,
            "on_track": not m.off_track,
            "off_track_events": m.off_track_events,
            "off_track_time_s": m.off_track_time_s,
            "progress_m": m.progress_m,
            "laps": self.laps,
            "lap_times_s": [b - a for a, b in zip([0.0, *m.lap_end_s], m.lap_end_s, strict=False)],
            "speed_mps": speed,
            "distance_m": m.distance_m,
            "sim_time_s": t,
        }

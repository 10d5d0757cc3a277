"""Per-tick timing statistics for the control loop.

Kept in fixed-size ring buffers so that a robot running for days neither grows
its memory nor reports percentiles dominated by its first minute.  Percentiles
are computed only when somebody asks (the API, a benchmark), never per tick.
"""

from __future__ import annotations

import threading

import numpy as np


class RollingSeries:
    """The last ``size`` samples of one quantity plus all-time count and max."""

    def __init__(self, size: int) -> None:
        self._buf = np.zeros(size, dtype=np.float64)
        self._n = 0
        self._max = 0.0
        self._lock = threading.Lock()

    def add(self, value: float) -> None:
        with self._lock:
            self._buf[self._n % self._buf.size] = value
            self._n += 1
            if value > self._max:
                self._max = value

    @property
    def count(self) -> int:
        return self._n

    def values(self) -> np.ndarray:
        with self._lock:
            n = min(self._n, self._buf.size)
            return self._buf[:n].copy()

    def summary(self, scale: float = 1000.0) -> dict[str, float]:
        """p50/p99/max (max over all time) in ms when ``scale`` is 1000."""
        vals = self.values()
        if vals.size == 0:
            return {"p50": 0.0, "p99": 0.0, "max": 0.0, "n": 0}
        p50, p99 = np.percentile(vals, [50, 99])
        return {
            "p50": round(float(p50) * scale, 4),
            "p99": round(float(p99) * scale, 4),
            "max": round(self._max * scale, 4),
            "n": self._n,
        }

    def reset(self) -> None:
        with self._lock:
            self._n = 0
            self._max = 0.0


class LoopTiming:
    """Everything the control loop measures about itself."""

    def __init__(self, window: int = 6000) -> None:
        # |tick start - when it was due|: the timer deadline, or a frame's arrival
        self.jitter = RollingSeries(window)
        self.compute = RollingSeries(window)  # tick start -> actuators written
        self.latency = RollingSeries(window)  # frame capture -> first write decided on it
        self.frame_age = RollingSeries(window)  # camera capture -> tick start
        self.ticks = 0
        self.overruns = 0  # ticks that finished after the next deadline
        self.skipped = 0  # deadlines dropped to catch up after an overrun
        self.frame_ticks = 0  # ticks that acted on a camera frame no tick had before
        self.ticks_without_frame = 0  # ticks on an old frame (timer, or the frame fallback)
        self.frames_without_tick = 0  # camera frames replaced before any tick took them

    def summary(self) -> dict[str, object]:
        return {
            "ticks": self.ticks,
            "overruns": self.overruns,
            "skipped_ticks": self.skipped,
            "frame_ticks": self.frame_ticks,
            "ticks_without_frame": self.ticks_without_frame,
            "frames_without_tick": self.frames_without_tick,
            "jitter_ms": self.jitter.summary(),
            "compute_ms": self.compute.summary(),
            "latency_ms": self.latency.summary(),
            "frame_age_ms": self.frame_age.summary(),
        }

    def reset(self) -> None:
        for s in (self.jitter, self.compute, self.latency, self.frame_age):
            s.reset()
        self.ticks = self.overruns = self.skipped = 0
        self.frame_ticks = self.ticks_without_frame = self.frames_without_tick = 0

"""Bounded timing windows for writer statistics.

The writer runs for hours at 50 Hz; keeping every sample would grow memory
without bound, so each series keeps the most recent ``window`` samples for
percentiles plus an all-time count and maximum.
"""

from __future__ import annotations

import math
from collections import deque


class Window:
    def __init__(self, window: int = 4096) -> None:
        self._samples: deque[float] = deque(maxlen=window)
        self.count = 0
        self.max = 0.0

    def add(self, value: float) -> None:
        self._samples.append(value)
        self.count += 1
        self.max = max(self.max, value)

    def percentile(self, q: float) -> float:
        """Nearest-rank percentile of the recent window (0.0 when empty)."""
        if not self._samples:
            return 0.0
        ordered = sorted(self._samples)
        rank = max(1, math.ceil(q / 100.0 * len(ordered)))
        return ordered[rank - 1]

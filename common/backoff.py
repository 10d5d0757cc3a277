"""The one back-off: exponential, capped, optionally jittered, reset after a healthy run.

Every retry loop of the robot (the supervisor's task restarts, the MQTT reconnect, the
recording writer's restart, the pairing lock-out, the API's accept pause, mDNS, the episode
uploader) waits by this rule, each with its own numbers, so a fix to the rule (overflow,
jitter, reset) reaches all of them.

* :class:`BackoffPolicy` is the pure rule: the n-th consecutive failure waits
  ``min(initial_s * factor ** (n - 1), max_s)``, times a jitter factor drawn in
  ``[1 - jitter, 1]`` (robots of a fleet then do not retry in lockstep).
* :class:`Backoff` counts the failures of one loop; a try that stayed up at least
  ``reset_after_s`` counts as healthy and starts the delays again from ``initial_s``.
  The clock and the random source are injected for tests.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    initial_s: float
    max_s: float
    factor: float = 2.0
    jitter: float = 0.0  # fraction of the delay that is random: 0.5 draws in [d/2, d]

    def __post_init__(self) -> None:
        if not self.initial_s > 0:
            raise ValueError(f"back-off initial_s must be > 0, got {self.initial_s}")
        if not self.max_s >= self.initial_s:
            raise ValueError(f"back-off max_s ({self.max_s}) must be >= initial_s")
        if not self.factor >= 1.0:
            raise ValueError(f"back-off factor must be >= 1, got {self.factor}")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"back-off jitter must be within [0, 1], got {self.jitter}")

    def delay(self, failures: int) -> float:
        """The un-jittered wait after the ``failures``-th consecutive failure (1-based)."""
        delay = self.initial_s
        for _ in range(max(1, failures) - 1):  # a loop, not **: no overflow after many
            delay *= self.factor
            if delay >= self.max_s:
                return self.max_s
        return min(delay, self.max_s)

    def jittered(self, delay: float, draw: float) -> float:
        """``delay`` scaled by a draw in [0, 1): the top ``jitter`` share of it is random."""
        return delay * (1.0 - self.jitter + self.jitter * draw)


class Backoff:
    """The failures of one retry loop: ``next_delay()`` after each, ``reset()`` on success.

    With ``reset_after_s``, call ``started()`` when a try begins: a failure that comes at
    least that long after it was healthy and waits ``initial_s`` again.
    """

    def __init__(
        self,
        policy: BackoffPolicy,
        *,
        reset_after_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if reset_after_s is not None and not reset_after_s > 0:
            raise ValueError(f"back-off reset_after_s must be > 0, got {reset_after_s}")
        self.policy = policy
        self.reset_after_s = reset_after_s
        self._clock = clock
        self._rng = rng
        self._failures = 0
        self._started: float | None = None

    @property
    def failures(self) -> int:
        """Consecutive failures since the last reset."""
        return self._failures

    def started(self) -> None:
        """A try begins now (its length decides whether its failure resets the back-off)."""
        self._started = self._clock()

    def reset(self) -> None:
        self._failures = 0

    def next_delay(self) -> float:
        """Book one failure; how long to wait before the next try."""
        if (
            self.reset_after_s is not None
            and self._started is not None
            and self._clock() - self._started >= self.reset_after_s
        ):
            self._failures = 0
        self._started = None
        self._failures += 1
        delay = self.policy.delay(self._failures)
        if self.policy.jitter:
            delay = self.policy.jittered(delay, self._rng())
        return delay

"""The health window: judge a freshly swapped-in policy by what it does on the robot.

Why counters and deltas: the policy runner and the safety layer already count
inference errors, NaN/Inf outputs, deadline misses and interventions.  The
monitor snapshots them when the new model takes its first tick and watches the
differences.  It fails EARLY, on the first poll where a threshold is exceeded,
so that a bad model holds the wheel for as few ticks as possible (each of its
bad ticks is already neutral, by the safety layer); it commits only when the
whole window passed.

Thresholds are the stricter of the robot's config and the bundle's safety
manifest; the window is the longer of the two.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from brain.config import OtaConfig


@dataclass(frozen=True, slots=True)
class HealthThresholds:
    window_s: float
    max_inference_errors: int
    max_nan_outputs: int
    max_deadline_misses: int
    max_safety_interventions: int
    min_inferences: int = 0
    max_latency_ms: float | None = None  # per step, checked before the swap (smoke test)

    @classmethod
    def combine(cls, cfg: OtaConfig, safety: Any | None = None) -> HealthThresholds:
        """Config thresholds, tightened (never loosened) by the bundle's safety manifest."""

        def tight(name: str, ours: int) -> int:
            theirs = getattr(safety, name, None) if safety is not None else None
            return ours if theirs is None else min(ours, int(theirs))

        window = cfg.health_window_s
        theirs = getattr(safety, "health_window_s", None) if safety is not None else None
        if theirs is not None:
            window = max(window, float(theirs))
        latency = getattr(safety, "max_latency_ms", None) if safety is not None else None
        return cls(
            window_s=window,
            max_inference_errors=tight("max_inference_errors", cfg.max_inference_errors),
            max_nan_outputs=tight("max_nan_outputs", cfg.max_nan_outputs),
            max_deadline_misses=tight("max_deadline_misses", cfg.max_deadline_misses),
            max_safety_interventions=tight(
                "max_safety_interventions", cfg.max_safety_interventions
            ),
            min_inferences=cfg.min_inferences,
            max_latency_ms=None if latency is None else float(latency),
        )


@dataclass(frozen=True, slots=True)
class HealthCounters:
    inferences: int = 0
    errors: int = 0
    nan_outputs: int = 0
    deadline_misses: int = 0
    interventions: int = 0

    def __sub__(self, other: HealthCounters) -> HealthCounters:
        return HealthCounters(*(a - b for a, b in zip(astuple(self), astuple(other), strict=True)))


def astuple(c: HealthCounters) -> tuple[int, ...]:
    return (c.inferences, c.errors, c.nan_outputs, c.deadline_misses, c.interventions)


@dataclass(slots=True)
class HealthReport:
    healthy: bool
    reasons: list[str]
    seen: HealthCounters
    elapsed_s: float
    thresholds: HealthThresholds
    aborted: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy,
            "reasons": self.reasons,
            "seen": asdict(self.seen),
            "elapsed_s": round(self.elapsed_s, 3),
            "thresholds": asdict(self.thresholds),
            "aborted": self.aborted,
        }


def violations(seen: HealthCounters, t: HealthThresholds) -> list[str]:
    out = []
    for count, limit, what in (
        (seen.errors, t.max_inference_errors, "inference errors"),
        (seen.nan_outputs, t.max_nan_outputs, "NaN/Inf outputs"),
        (seen.deadline_misses, t.max_deadline_misses, "inferences over the latency budget"),
        (seen.interventions, t.max_safety_interventions, "safety interventions"),
    ):
        if count > limit:
            out.append(f"{count} {what} (at most {limit} allowed)")
    return out


class HealthMonitor:
    """Reads the counters through two callables, so it needs no daemon to be tested."""

    def __init__(
        self,
        policy_stats: Callable[[], dict[str, Any]],
        interventions: Callable[[], int] | None = None,
        *,
        poll_s: float = 0.02,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._policy_stats = policy_stats
        self._interventions = interventions
        self.poll_s = poll_s
        self._clock = clock

    def counters(self) -> HealthCounters:
        s = self._policy_stats()
        return HealthCounters(
            inferences=int(s.get("count", 0)),
            errors=int(s.get("errors", 0)),
            nan_outputs=int(s.get("nan_outputs", 0)),
            deadline_misses=int(s.get("deadline_misses", 0)),
            interventions=int(self._interventions()) if self._interventions else 0,
        )

    async def watch(
        self,
        thresholds: HealthThresholds,
        baseline: HealthCounters,
        *,
        abort: asyncio.Event | None = None,
        remaining_s: float | None = None,
    ) -> HealthReport:
        """Poll until the window ends, a threshold is exceeded, or ``abort`` is set."""
        t0 = self._clock()
        window = thresholds.window_s if remaining_s is None else max(0.0, remaining_s)
        while True:
            seen = self.counters() - baseline
            elapsed = self._clock() - t0
            bad = violations(seen, thresholds)
            if bad:
                return HealthReport(False, bad, seen, elapsed, thresholds)
            if abort is not None and abort.is_set():
                return HealthReport(False, ["trial aborted"], seen, elapsed, thresholds, True)
            if elapsed >= window:
                if seen.inferences < thresholds.min_inferences:
                    why = (
                        f"only {seen.inferences} inferences in the window "
                        f"(at least {thresholds.min_inferences} needed)"
                    )
                    return HealthReport(False, [why], seen, elapsed, thresholds)
                return HealthReport(True, [], seen, elapsed, thresholds)
            step = min(self.poll_s, max(0.0, window - elapsed))
            if abort is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(abort.wait(), timeout=step or self.poll_s)
            else:
                await asyncio.sleep(step)

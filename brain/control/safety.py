"""The safety layer: the last code between a command and the actuators.

Every command, whoever produced it (phone, policy, expert), passes through
``SafetyLayer.filter`` once per tick.  The rules, in order:

1. motion not allowed (mode, e-stop, stale camera, supervised-autonomy deadman) -> neutral
2. no command, or the command is older than the teleop timeout -> neutral
   (a phone that loses Wi-Fi must stop the car, not leave it at full throttle)
3. NaN/Inf anywhere in the command -> neutral (a broken model must not steer)
4. clamp to the actuator range intersected with the configured limits
5. slew-rate limit, but only when moving *away* from neutral: slowing down
   and centring the wheels are never delayed.

Each intervention is counted by reason; the OTA health window reads these
counts to judge a freshly installed policy.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from brain.config import SafetyConfig
from brain.hardware.protocols import ActionSpec

# Reasons a tick ended in neutral (or was altered), as counted in stats().
NEUTRAL_REASONS = (
    "no_motion",
    "stale_frame",
    "deadman",
    "no_command",
    "watchdog",
    "non_finite",
)


@dataclass(frozen=True, slots=True)
class SafetyOutput:
    """What to send to the actuators this tick.

    ``neutral`` True means call ``Actuators.neutral()`` (which also knows how to
    "hold" an arm); ``action`` is then the neutral vector, for logging.
    """

    action: np.ndarray
    neutral: bool
    reason: str | None = None
    clamped: bool = False
    slewed: bool = False


class SafetyLayer:
    """Stateful filter (it remembers the last output for slew limiting); one per control loop."""

    def __init__(
        self,
        spec: ActionSpec,
        cfg: SafetyConfig,
        default_slew_per_s: dict[str, float] | None = None,
    ) -> None:
        self.spec = spec
        self.timeout_s = cfg.teleop_timeout_ms / 1000.0
        self.heartbeat_s = cfg.autonomous_heartbeat_s or None
        low = np.asarray(spec.low, dtype=np.float64)
        high = np.asarray(spec.high, dtype=np.float64)
        for i, name in enumerate(spec.names):
            if name in cfg.limits:
                lo, hi = cfg.limits[name]
                low[i] = max(low[i], lo)
                high[i] = min(high[i], hi)
                if not low[i] < high[i]:
                    raise ValueError(
                        f"safety.limits.{name} [{lo}, {hi}] does not overlap the actuator range "
                        f"[{spec.low[i]}, {spec.high[i]}]"
                    )
        self.low, self.high = low, high
        slew = dict(default_slew_per_s or {})
        slew.update(cfg.slew_per_s)
        self.slew_per_s = np.array([slew.get(n, np.inf) for n in spec.names], dtype=np.float64)
        self._neutral = np.asarray(spec.neutral, dtype=np.float64)
        self._last: np.ndarray | None = None
        self._last_t: float | None = None
        self.counts: Counter[str] = Counter()

    # ------------------------------------------------------------------ public

    def filter(
        self,
        command: np.ndarray | None,
        *,
        command_t: float | None,
        now: float,
        motion_allowed: bool,
        block_reason: str = "no_motion",
    ) -> SafetyOutput:
        if not motion_allowed:
            return self._to_neutral(now, block_reason)
        if command is None or command_t is None:
            return self._to_neutral(now, "no_command")
        if now - command_t > self.timeout_s:
            return self._to_neutral(now, "watchdog")
        cmd = np.asarray(command, dtype=np.float64).reshape(-1)
        if cmd.shape != (self.spec.size,):
            # A wrong-sized command is a bug upstream, not something to guess around.
            self.counts["bad_shape"] += 1
            return self._to_neutral(now, "non_finite")
        if not np.all(np.isfinite(cmd)):
            return self._to_neutral(now, "non_finite")

        clipped = np.clip(cmd, self.low, self.high)
        clamped = bool(np.any(clipped != cmd))
        if clamped:
            self.counts["clamped"] += 1
        out, slewed = self._slew(clipped, now)
        if slewed:
            self.counts["slewed"] += 1
        self._remember(out, now)
        return SafetyOutput(action=out, neutral=False, clamped=clamped, slewed=slewed)

    def deadman_holds(self, heartbeat_t: float | None, now: float) -> bool:
        """Supervised autonomy: True while no operator heartbeat is young enough.

        Only meaningful in AUTONOMOUS (the loop asks only then); off when
        ``safety.autonomous_heartbeat_s`` is unset or 0.
        """
        if self.heartbeat_s is None:
            return False
        return heartbeat_t is None or now - heartbeat_t > self.heartbeat_s

    def force_neutral(self, now: float, reason: str) -> SafetyOutput:
        """Used outside the tick (e-stop wake-up, shutdown) to reset the slew state too."""
        return self._to_neutral(now, reason)

    def stats(self) -> dict[str, int]:
        return dict(self.counts)

    @property
    def interventions(self) -> int:
        """Ticks where safety overrode a motion command (not the idle neutral ticks)."""
        c = self.counts
        return c["watchdog"] + c["non_finite"] + c["stale_frame"] + c["clamped"]

    # ------------------------------------------------------------------ internals

    def _to_neutral(self, now: float, reason: str) -> SafetyOutput:
        self.counts[reason] += 1
        out = self.spec.neutral_array(hold=self._last)
        self._remember(out, now)
        return SafetyOutput(action=out, neutral=True, reason=reason)

    def _remember(self, out: np.ndarray, now: float) -> None:
        self._last = out
        self._last_t = now

    def _slew(self, target: np.ndarray, now: float) -> tuple[np.ndarray, bool]:
        last = self._last
        if last is None or self._last_t is None or not np.any(np.isfinite(self.slew_per_s)):
            return target, False
        dt = max(now - self._last_t, 0.0)
        step = self.slew_per_s * dt
        out = target.copy()
        slewed = False
        for i in range(target.size):
            if not np.isfinite(step[i]) or np.isnan(last[i]):
                continue
            n = self._neutral[i]
            if np.isnan(n):  # no neutral (arm joint): limit speed both ways
                lo, hi = last[i] - step[i], last[i] + step[i]
            else:
                d_last, d_new = last[i] - n, target[i] - n
                if (d_new * d_last > 0 and abs(d_new) <= abs(d_last)) or d_new == 0:
                    continue  # towards neutral on the same side: never delayed
                base = last[i] if d_new * d_last > 0 else n  # crossing neutral restarts at it
                lo, hi = base - step[i], base + step[i]
            v = min(max(target[i], lo), hi)
            if v != target[i]:
                out[i] = v
                slewed = True
        return out, slewed

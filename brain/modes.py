"""Operating modes and the rules for moving between them.

The mode is the single switch that decides whether the robot may move.  It
lives in one small thread-safe object read by the control thread every tick
and changed by the event loop (API, supervisor), so the rules are kept here
and nowhere else:

* the robot boots in IDLE and never boots into motion;
* ESTOP is reachable from every mode and is latched: only an explicit
  ``reset_estop()`` returns to IDLE, never a plain mode change;
* TRAINING (the local fine-tune) allows no motion and no inference, so the
  trainer subprocess gets the CPU and the car stands still.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

_log = logging.getLogger(__name__)


class Mode(enum.StrEnum):
    IDLE = "idle"
    MANUAL = "manual"
    AUTONOMOUS = "autonomous"
    TRAINING = "training"
    ESTOP = "estop"


@dataclass(frozen=True, slots=True)
class ModeFlags:
    motion: bool
    record: bool
    inference: bool


# record for AUTONOMOUS is a permission: the config decides whether it is used.
FLAGS: dict[Mode, ModeFlags] = {
    Mode.IDLE: ModeFlags(motion=False, record=False, inference=False),
    Mode.MANUAL: ModeFlags(motion=True, record=True, inference=False),
    Mode.AUTONOMOUS: ModeFlags(motion=True, record=True, inference=True),
    Mode.TRAINING: ModeFlags(motion=False, record=False, inference=False),
    Mode.ESTOP: ModeFlags(motion=False, record=False, inference=False),
}

# Allowed set_mode() transitions.  ESTOP is entered through estop() and left
# only through reset_estop(); it is listed here as a target for completeness.
TRANSITIONS: dict[Mode, frozenset[Mode]] = {
    Mode.IDLE: frozenset({Mode.MANUAL, Mode.AUTONOMOUS, Mode.TRAINING, Mode.ESTOP}),
    Mode.MANUAL: frozenset({Mode.IDLE, Mode.AUTONOMOUS, Mode.ESTOP}),
    Mode.AUTONOMOUS: frozenset({Mode.IDLE, Mode.MANUAL, Mode.ESTOP}),
    Mode.TRAINING: frozenset({Mode.IDLE, Mode.ESTOP}),
    Mode.ESTOP: frozenset(),
}


class ModeError(ValueError):
    """A requested mode change is not allowed; the message says why."""


@dataclass(frozen=True, slots=True)
class ModeChange:
    old: Mode
    new: Mode
    reason: str
    t: float


Listener = Callable[[ModeChange], None]


class ModeManager:
    """Holds the current mode; every change goes through the transition table."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._mode = Mode.IDLE
        self._estop_reason: str | None = None
        self._clock = clock
        self._listeners: list[Listener] = []
        self._generation = 0

    @property
    def mode(self) -> Mode:
        return self._mode

    @property
    def flags(self) -> ModeFlags:
        return FLAGS[self._mode]

    @property
    def estop_reason(self) -> str | None:
        return self._estop_reason

    @property
    def generation(self) -> int:
        """Bumped on every change, so the control loop can notice a change between ticks."""
        return self._generation

    def subscribe(self, listener: Listener) -> None:
        """Listeners run on the thread that made the change; they must be quick and not raise."""
        self._listeners.append(listener)

    def set_mode(self, new: Mode | str, reason: str = "") -> ModeChange:
        try:
            target = Mode(new)
        except ValueError:
            valid = ", ".join(m.value for m in Mode)
            raise ModeError(f"unknown mode {new!r}; valid modes: {valid}") from None
        if target is Mode.ESTOP:
            return self.estop(reason or "requested")
        with self._lock:
            old = self._mode
            if old is Mode.ESTOP:
                raise ModeError(
                    f"e-stop is latched ({self._estop_reason}); reset it to return to idle"
                )
            if target is old:
                return ModeChange(old, old, reason, self._clock())
            if target not in TRANSITIONS[old]:
                allowed = ", ".join(sorted(m.value for m in TRANSITIONS[old])) or "none"
                raise ModeError(f"cannot go from {old.value} to {target.value}; allowed: {allowed}")
            change = self._apply_locked(target, reason)
        self._notify(change)
        return change

    def estop(self, reason: str) -> ModeChange:
        """Latch the e-stop from any thread and mode; repeated calls keep the first reason."""
        with self._lock:
            old = self._mode
            if old is Mode.ESTOP:
                return ModeChange(old, old, reason, self._clock())
            self._estop_reason = reason
            change = self._apply_locked(Mode.ESTOP, reason)
        self._notify(change)
        return change

    def reset_estop(self, reason: str = "reset") -> ModeChange:
        with self._lock:
            if self._mode is not Mode.ESTOP:
                raise ModeError(f"e-stop is not latched (mode is {self._mode.value})")
            self._estop_reason = None
            change = self._apply_locked(Mode.IDLE, reason)
        self._notify(change)
        return change

    def _apply_locked(self, new: Mode, reason: str) -> ModeChange:
        change = ModeChange(self._mode, new, reason, self._clock())
        self._mode = new
        self._generation += 1
        return change

    def _notify(self, change: ModeChange) -> None:
        for listener in list(self._listeners):
            try:
                listener(change)
            except Exception:  # a broken listener must never block an e-stop
                _log.exception("mode listener failed")

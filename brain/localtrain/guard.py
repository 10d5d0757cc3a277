"""The resource guard: keeps a fine-tune from starving the robot of memory or cooking its CPU.

Levels come from memory use and CPU temperature, classified by ``common.health`` (the one
host-health reading and its thresholds, which hw-check and the API's /health share: memory
NORMAL < 75 %, WARNING 75-85 %, CRITICAL 85-90 %, EMERGENCY >= 90 %; temperature > 70 C
WARNING, > 80 C CRITICAL, >= 85 C EMERGENCY).  The worse wins.  What the manager does:

* CRITICAL: SIGSTOP the trainer (it keeps its memory but takes no CPU) and SIGCONT it once
  the level has dropped below CRITICAL again;
* EMERGENCY: stop it (SIGCONT so it can see the SIGTERM, SIGTERM so it checkpoints, SIGKILL
  if it does not exit in time).

psutil is touched only behind :class:`PsutilReader`, so tests drive the guard with any reader.
"""

from __future__ import annotations

import contextlib
import enum
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from common.health import Assessment, HostReading, Level, Thresholds, assess, read_host

#: What the guard judges: pausing or stopping a trainer helps memory and heat, not a full disk.
GUARDED = ("memory", "temperature")


class Reader(Protocol):
    def read(self) -> HostReading: ...


class PsutilReader:
    """The real machine, through the one host-health reading (memory, CPU temperature, battery)."""

    def read(self) -> HostReading:
        return read_host()


class Action(enum.StrEnum):
    NONE = "none"
    PAUSE = "pause"
    RESUME = "resume"
    STOP = "stop"


@dataclass
class ProcessGuard:
    """Applies levels to one trainer process: pause at CRITICAL, resume below, stop at EMERGENCY.

    ``signal_fn`` is ``os.kill`` (tests may wrap it to record what was sent).  ``stop_fn``
    is called once at EMERGENCY (the manager's graceful stop); the guard itself only
    un-pauses the process first so the stop can be seen.
    """

    pid: int
    thresholds: Thresholds
    reader: Reader
    stop_fn: Callable[[str], None]
    signal_fn: Callable[[int, int], None] = os.kill
    paused: bool = False
    stopped: bool = False
    last: Assessment | None = None
    pauses: int = 0
    history: list[tuple[Level, Action]] = field(default_factory=list)

    def check(self) -> Action:
        """Sample once and act; returns what was done."""
        a = assess(self.reader.read(), self.thresholds, GUARDED)
        self.last = a
        action = Action.NONE
        if self.stopped:
            pass
        elif a.level >= Level.EMERGENCY:
            self.stopped = True
            if self.paused:
                self._send(signal.SIGCONT)
                self.paused = False
            self.stop_fn("resource emergency: " + "; ".join(a.reasons))
            action = Action.STOP
        elif a.level >= Level.CRITICAL:
            if not self.paused:
                self._send(signal.SIGSTOP)
                self.paused = True
                self.pauses += 1
                action = Action.PAUSE
        elif self.paused:
            self._send(signal.SIGCONT)
            self.paused = False
            action = Action.RESUME
        self.history.append((a.level, action))
        return action

    def release(self) -> None:
        """Never leave a trainer frozen behind us (e.g. when the manager is stopping it)."""
        if self.paused:
            self._send(signal.SIGCONT)
            self.paused = False

    def _send(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):  # gone: nothing to pause or resume
            self.signal_fn(self.pid, sig)

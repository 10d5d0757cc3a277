"""The resource guard: keeps a fine-tune from starving the robot of memory or cooking its CPU.

Levels come from memory use and CPU temperature (DESIGN.md, "Defaults that come from the
field"): memory NORMAL < 75 %, WARNING 75-85 %, CRITICAL 85-90 %, EMERGENCY >= 90 %;
temperature > 70 C WARNING, > 80 C CRITICAL (and >= 85 C, where a Pi 5 throttles hard,
EMERGENCY).  The worse of the two wins.  What the manager does with a level:

* CRITICAL: SIGSTOP the trainer (it keeps its memory but takes no CPU) and SIGCONT it once
  the level has dropped below CRITICAL again;
* EMERGENCY: stop it (SIGCONT so it can see the SIGTERM, SIGTERM so it checkpoints, SIGKILL
  if it does not exit in time).

psutil is touched only in :class:`PsutilReader`, so tests drive the guard with any reader.
"""

from __future__ import annotations

import contextlib
import enum
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import psutil


class Level(enum.IntEnum):
    NORMAL = 0
    WARNING = 1
    CRITICAL = 2
    EMERGENCY = 3


@dataclass(frozen=True, slots=True)
class Readings:
    """One sample of what the guard looks at (None: not known on this machine)."""

    memory_percent: float
    temperature_c: float | None = None
    battery_percent: float | None = None
    power_plugged: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "memory_percent": round(self.memory_percent, 1),
            "temperature_c": None if self.temperature_c is None else round(self.temperature_c, 1),
            "battery_percent": self.battery_percent,
            "power_plugged": self.power_plugged,
        }


class Reader(Protocol):
    def read(self) -> Readings: ...


# Sensor names psutil reports for the CPU on a Pi (cpu_thermal), x86 (coretemp, k10temp).
_CPU_SENSORS = ("cpu_thermal", "coretemp", "k10temp", "cpu-thermal", "soc_thermal", "acpitz")


class PsutilReader:
    """The real machine: psutil's virtual memory, CPU temperature sensors and battery."""

    def read(self) -> Readings:
        mem = float(psutil.virtual_memory().percent)
        temp: float | None = None
        sensors = getattr(psutil, "sensors_temperatures", None)
        if sensors is not None:
            try:
                found = sensors() or {}
            except (OSError, RuntimeError):
                found = {}
            for name in _CPU_SENSORS:
                values = [t.current for t in found.get(name, []) if t.current is not None]
                if values:
                    temp = float(max(values))
                    break
        bat_pct: float | None = None
        plugged: bool | None = None
        battery = getattr(psutil, "sensors_battery", None)
        if battery is not None:
            try:
                b = battery()
            except (OSError, RuntimeError):
                b = None
            if b is not None:
                bat_pct, plugged = float(b.percent), b.power_plugged
        return Readings(mem, temp, bat_pct, plugged)


@dataclass(frozen=True, slots=True)
class Thresholds:
    memory_warning_pct: float = 75.0
    memory_critical_pct: float = 85.0
    memory_emergency_pct: float = 90.0
    temp_warning_c: float = 70.0
    temp_critical_c: float = 80.0
    temp_emergency_c: float = 85.0
    min_battery_pct: float = 30.0

    @classmethod
    def from_config(cls, cfg: Any) -> Thresholds:
        """From a ``LocalTrainConfig`` (same field names)."""
        return cls(**{name: float(getattr(cfg, name)) for name in cls.__dataclass_fields__})


@dataclass(frozen=True, slots=True)
class Assessment:
    level: Level
    reasons: tuple[str, ...]
    readings: Readings

    def to_dict(self) -> dict[str, Any]:
        return {
            "level": self.level.name,
            "reasons": list(self.reasons),
            **self.readings.to_dict(),
        }


def assess(r: Readings, t: Thresholds) -> Assessment:
    """The level for one sample and why (empty reasons at NORMAL)."""
    level = Level.NORMAL
    reasons: list[str] = []

    def raise_to(lvl: Level, why: str) -> None:
        nonlocal level
        level = max(level, lvl)
        reasons.append(why)

    m = r.memory_percent
    if m >= t.memory_emergency_pct:
        raise_to(Level.EMERGENCY, f"memory {m:.0f} % >= {t.memory_emergency_pct:.0f} %")
    elif m >= t.memory_critical_pct:
        raise_to(Level.CRITICAL, f"memory {m:.0f} % >= {t.memory_critical_pct:.0f} %")
    elif m >= t.memory_warning_pct:
        raise_to(Level.WARNING, f"memory {m:.0f} % >= {t.memory_warning_pct:.0f} %")
    c = r.temperature_c
    if c is not None:
        if c >= t.temp_emergency_c:
            raise_to(Level.EMERGENCY, f"CPU {c:.0f} C >= {t.temp_emergency_c:.0f} C")
        elif c > t.temp_critical_c:
            raise_to(Level.CRITICAL, f"CPU {c:.0f} C > {t.temp_critical_c:.0f} C")
        elif c > t.temp_warning_c:
            raise_to(Level.WARNING, f"CPU {c:.0f} C > {t.temp_warning_c:.0f} C")
    return Assessment(level, tuple(reasons), r)


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
        a = assess(self.reader.read(), self.thresholds)
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

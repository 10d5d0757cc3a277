"""Host health: ONE reading of the machine and ONE classification of it.

hw-check, the Robot API's ``/health`` and the fine-tune's resource guard all judge the
same host; they used to read it three times with three sets of thresholds (memory failed
at 90 % in hw-check but was critical at 85 % in the API).  Now each takes a
:class:`HostReading` (from :func:`read_host`, or built by a test) and :func:`assess` gives
every check a :class:`Level`; each user only maps the level onto its own words.

Thresholds (DESIGN.md, "Defaults that come from the field"; the ``local_train`` config keys
of the same names change them for every user alike):

=============== =========== ============ ============== ===============
check           WARNING     CRITICAL     EMERGENCY      comparison
=============== =========== ============ ============== ===============
memory used     >= 75 %     >= 85 %      >= 90 %        NORMAL < 75 %
CPU temperature > 70 °C     > 80 °C      >= 85 °C       (a Pi 5 throttles hard there)
disk used       > 80 %      > 90 %       --             at the robot's state directory
=============== =========== ============ ============== ===============

The disk's 80 % warning is an early notice only (DESIGN names 90 % critical).  The overall
level is the worst of the checks present in the reading (a check whose value is unknown on
this machine is skipped).  What each user makes of a level -- the one mapping:

=========== ================ ================= =======================================
Level       hw-check         API ``status``    training guard
=========== ================ ================= =======================================
NORMAL      PASS             ``ok``            runs
WARNING     WARN             ``warning``       runs (a fine-tune does not start hot)
CRITICAL    FAIL             ``critical``      paused (SIGSTOP) until below CRITICAL
EMERGENCY   FAIL             ``emergency``     stopped (checkpoint, then exit)
=========== ================ ================= =======================================

The API's ``ok`` is false at CRITICAL or worse.  psutil is touched only in the ``read_*``
functions, so everything else is a pure function of a reading.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import psutil

THERMAL_PATH = Path("/sys/class/thermal/thermal_zone0/temp")

# Sensor names psutil reports for the CPU: a Pi's cpu_thermal, x86's coretemp/k10temp.
CPU_SENSORS = ("cpu_thermal", "coretemp", "k10temp", "cpu-thermal", "soc_thermal", "acpitz")


class Level(enum.IntEnum):
    NORMAL = 0
    WARNING = 1
    CRITICAL = 2
    EMERGENCY = 3


#: hw-check's status for each level (see the module docstring's table).
HWCHECK_STATUS: Mapping[Level, str] = {
    Level.NORMAL: "PASS",
    Level.WARNING: "WARN",
    Level.CRITICAL: "FAIL",
    Level.EMERGENCY: "FAIL",
}
#: The Robot API's ``checks.*.status`` for each level.
API_STATUS: Mapping[Level, str] = {
    Level.NORMAL: "ok",
    Level.WARNING: "warning",
    Level.CRITICAL: "critical",
    Level.EMERGENCY: "emergency",
}


@dataclass(frozen=True, slots=True)
class DiskReading:
    """Usage of the file system holding ``path`` (measured at ``measured_at``, its nearest
    existing parent, when ``path`` is not created yet)."""

    path: Path
    measured_at: Path
    percent: float
    free_bytes: int
    total_bytes: int


@dataclass(frozen=True, slots=True)
class HostReading:
    """One sample of the host; None: not known on this machine (or not asked for)."""

    memory_percent: float
    temperature_c: float | None = None
    battery_percent: float | None = None
    power_plugged: bool | None = None
    disk: DiskReading | None = None
    memory_total_bytes: int | None = None
    memory_available_bytes: int | None = None
    swap_percent: float | None = None
    load_1m: float | None = None
    cpu_percent: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "memory_percent": round(self.memory_percent, 1),
            "temperature_c": None if self.temperature_c is None else round(self.temperature_c, 1),
            "battery_percent": self.battery_percent,
            "power_plugged": self.power_plugged,
        }


@dataclass(frozen=True, slots=True)
class Thresholds:
    """DESIGN.md's levels; ``from_config`` reads the ``local_train`` keys of the same names."""

    memory_warning_pct: float = 75.0
    memory_critical_pct: float = 85.0
    memory_emergency_pct: float = 90.0
    temp_warning_c: float = 70.0
    temp_critical_c: float = 80.0
    temp_emergency_c: float = 85.0
    disk_warning_pct: float = 80.0
    disk_critical_pct: float = 90.0
    min_battery_pct: float = 30.0

    def __post_init__(self) -> None:
        if not self.memory_warning_pct < self.memory_critical_pct < self.memory_emergency_pct:
            raise ValueError("memory levels must satisfy warning < critical < emergency")
        if not self.temp_warning_c < self.temp_critical_c <= self.temp_emergency_c:
            raise ValueError("temperature levels must satisfy warning < critical <= emergency")
        if not self.disk_warning_pct <= self.disk_critical_pct:
            raise ValueError("disk levels must satisfy warning <= critical")

    @classmethod
    def from_config(cls, section: object) -> Thresholds:
        """From a config section carrying some of these names (others keep DESIGN's)."""
        values = {
            f.name: float(getattr(section, f.name))
            for f in fields(cls)
            if getattr(section, f.name, None) is not None
        }
        return cls(**values)


@dataclass(frozen=True, slots=True)
class Check:
    """One resource's level and, above NORMAL, why (naming the value and the threshold)."""

    level: Level
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Assessment:
    level: Level
    checks: Mapping[str, Check]  # "memory", "temperature", "disk": those present in the reading
    readings: HostReading

    @property
    def reasons(self) -> tuple[str, ...]:
        return tuple(c.reason for c in self.checks.values() if c.level > Level.NORMAL)

    def to_dict(self) -> dict[str, Any]:
        return {"level": self.level.name, "reasons": list(self.reasons), **self.readings.to_dict()}


def memory_level(percent: float, t: Thresholds) -> Check:
    for level, limit in (
        (Level.EMERGENCY, t.memory_emergency_pct),
        (Level.CRITICAL, t.memory_critical_pct),
        (Level.WARNING, t.memory_warning_pct),
    ):
        if percent >= limit:
            return Check(level, f"memory {percent:.0f} % >= {limit:g} %")
    return Check(Level.NORMAL)


def temperature_level(celsius: float, t: Thresholds) -> Check:
    if celsius >= t.temp_emergency_c:
        return Check(Level.EMERGENCY, f"CPU {celsius:.0f} C >= {t.temp_emergency_c:g} C")
    for level, limit in ((Level.CRITICAL, t.temp_critical_c), (Level.WARNING, t.temp_warning_c)):
        if celsius > limit:
            return Check(level, f"CPU {celsius:.0f} C > {limit:g} C")
    return Check(Level.NORMAL)


def disk_level(percent: float, t: Thresholds) -> Check:
    for level, limit in (
        (Level.CRITICAL, t.disk_critical_pct),
        (Level.WARNING, t.disk_warning_pct),
    ):
        if percent > limit:
            return Check(level, f"disk {percent:.0f} % > {limit:g} %")
    return Check(Level.NORMAL)


CHECKS = ("memory", "temperature", "disk")


def assess(
    r: HostReading, t: Thresholds | None = None, only: Collection[str] = CHECKS
) -> Assessment:
    """The checks in ``only`` that the reading has a value for, and the worst of their levels.

    Memory is always known; ``only`` lets a user judge part of the host (the training guard:
    memory and temperature -- pausing a trainer frees no disk).
    """
    t = t or Thresholds()
    checks = {"memory": memory_level(r.memory_percent, t)}
    if r.temperature_c is not None and "temperature" in only:
        checks["temperature"] = temperature_level(r.temperature_c, t)
    if r.disk is not None and "disk" in only:
        checks["disk"] = disk_level(r.disk.percent, t)
    return Assessment(max(c.level for c in checks.values()), checks, r)


# ----------------------------------------------------------------------------- reading


def nearest_existing(path: Path) -> Path:
    """``path`` itself, or its nearest parent that exists (a state dir not created yet)."""
    p = path.expanduser().absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def read_temperature(
    thermal_path: Path | None = THERMAL_PATH,
    sensors: Callable[[], Mapping[str, Any]] | None = None,
) -> float | None:
    """The CPU temperature in °C: psutil's CPU sensor (hottest core), else the sysfs thermal
    zone (millidegrees; the Pi's ``cpu_thermal``), None where the host has neither."""
    read_sensors = sensors or getattr(psutil, "sensors_temperatures", None)
    found: Mapping[str, Any] = {}
    if read_sensors is not None:
        try:
            found = read_sensors() or {}
        except (OSError, RuntimeError):
            found = {}
    for name in CPU_SENSORS:
        values = [t.current for t in found.get(name, []) if t.current is not None]
        if values:
            return float(max(values))
    if thermal_path is None:
        return None
    try:
        return int(thermal_path.read_text(encoding="ascii").strip()) / 1000.0
    except (OSError, ValueError):
        return None


def read_disk(path: Path) -> DiskReading:
    where = nearest_existing(path)
    usage = psutil.disk_usage(str(where))
    return DiskReading(path, where, float(usage.percent), int(usage.free), int(usage.total))


def _battery() -> tuple[float | None, bool | None]:
    battery = getattr(psutil, "sensors_battery", None)
    try:
        b = battery() if battery is not None else None
    except (OSError, RuntimeError):
        b = None
    return (None, None) if b is None else (float(b.percent), b.power_plugged)


def read_host(
    disk_path: Path | None = None,
    *,
    thermal_path: Path | None = THERMAL_PATH,
    sensors: Callable[[], Mapping[str, Any]] | None = None,
) -> HostReading:
    """Sample this machine (disk usage only when ``disk_path`` is given)."""
    vm = psutil.virtual_memory()
    battery_pct, plugged = _battery()
    try:
        load: float | None = os.getloadavg()[0]
    except OSError:
        load = None
    return HostReading(
        memory_percent=float(vm.percent),
        temperature_c=read_temperature(thermal_path, sensors),
        battery_percent=battery_pct,
        power_plugged=plugged,
        disk=None if disk_path is None else read_disk(disk_path),
        memory_total_bytes=int(vm.total),
        memory_available_bytes=int(vm.available),
        swap_percent=float(psutil.swap_memory().percent),
        load_1m=load,
        cpu_percent=float(psutil.cpu_percent(interval=None)),
    )

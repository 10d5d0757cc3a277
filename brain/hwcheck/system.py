"""Host health readings for hw-check: CPU temperature, Pi throttling flags, memory, disk.

The decoding and the thresholds are plain functions of their inputs, so they
can be checked without a Raspberry Pi; reading the host is kept apart from them.
Levels follow docs/DESIGN.md: CPU > 80 °C critical, > 70 °C warning; memory
< 75 % normal, 75-90 % warning, ≥ 90 % emergency; disk > 90 % critical.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

PASS = "PASS"
WARN = "WARN"
FAIL = "FAIL"
SKIP = "SKIP"

TEMP_WARN_C = 70.0
TEMP_FAIL_C = 80.0
MEMORY_WARN_PCT = 75.0
MEMORY_FAIL_PCT = 90.0
DISK_WARN_PCT = 80.0
DISK_FAIL_PCT = 90.0

THERMAL_PATH = Path("/sys/class/thermal/thermal_zone0/temp")

# Bits of `vcgencmd get_throttled` (Raspberry Pi firmware): 0..3 are happening
# now, 16..19 the same conditions "has occurred since boot".
THROTTLE_BITS: dict[int, str] = {
    0: "under-voltage",
    1: "arm frequency capped",
    2: "throttled",
    3: "soft temperature limit",
}
_OCCURRED_SHIFT = 16


# ----------------------------------------------------------------------------- temperature


def classify_temperature(celsius: float) -> tuple[str, str]:
    """(status, summary) for a CPU temperature in °C."""
    if celsius > TEMP_FAIL_C:
        return (
            FAIL,
            f"CPU at {celsius:.1f} °C, above {TEMP_FAIL_C:g} °C: cool the Pi (heatsink/fan)",
        )
    if celsius > TEMP_WARN_C:
        return WARN, f"CPU at {celsius:.1f} °C, above {TEMP_WARN_C:g} °C (warning level)"
    return PASS, f"CPU at {celsius:.1f} °C"


def read_temperature(path: Path = THERMAL_PATH) -> float | None:
    """The temperature in °C from a sysfs thermal zone (millidegrees), None if there is none."""
    try:
        raw = path.read_text(encoding="ascii").strip()
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return None
    return int(raw) / 1000.0


# ----------------------------------------------------------------------------- throttling


@dataclass(frozen=True, slots=True)
class ThrottleState:
    raw: int
    now: tuple[str, ...]
    occurred: tuple[str, ...]

    @property
    def status(self) -> str:
        if self.now:
            return FAIL
        if self.occurred:
            return WARN
        return PASS

    def summary(self) -> str:
        if not self.now and not self.occurred:
            return f"no under-voltage or throttling (get_throttled=0x{self.raw:x})"
        parts = []
        if self.now:
            parts.append("NOW: " + ", ".join(self.now))
        if self.occurred:
            parts.append("since boot: " + ", ".join(self.occurred))
        hint = (
            " - use the official 5 V/5 A supply and a short thick cable"
            if "under-voltage" in self.now + self.occurred
            else ""
        )
        return f"{'; '.join(parts)} (get_throttled=0x{self.raw:x}){hint}"

    def as_dict(self) -> dict[str, object]:
        return {"raw": f"0x{self.raw:x}", "now": list(self.now), "occurred": list(self.occurred)}


def decode_throttled(value: str | int) -> ThrottleState:
    """Decode ``vcgencmd get_throttled`` output (``throttled=0x50005``) or its integer."""
    if isinstance(value, int):
        raw = value
    else:
        text = value.strip()
        if "=" in text:
            text = text.split("=", 1)[1].strip()
        try:
            raw = int(text, 0)
        except ValueError:
            raise ValueError(f"cannot parse get_throttled output {value!r}") from None
    if raw < 0:
        raise ValueError(f"get_throttled value must not be negative, got {raw}")
    now = tuple(name for bit, name in THROTTLE_BITS.items() if raw & (1 << bit))
    occurred = tuple(
        name for bit, name in THROTTLE_BITS.items() if raw & (1 << (bit + _OCCURRED_SHIFT))
    )
    return ThrottleState(raw=raw, now=now, occurred=occurred)


def run_vcgencmd(*args: str, timeout: float = 5.0) -> str | None:
    """Output of ``vcgencmd ARGS``, None when vcgencmd is not installed."""
    exe = shutil.which("vcgencmd")
    if exe is None:
        return None
    proc = subprocess.run(
        [exe, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"vcgencmd {' '.join(args)} exited {proc.returncode}: "
            f"{(proc.stderr or proc.stdout).strip()}"
        )
    return proc.stdout.strip()


# ----------------------------------------------------------------------------- memory, disk


def classify_memory(percent: float) -> str:
    if percent >= MEMORY_FAIL_PCT:
        return FAIL
    if percent >= MEMORY_WARN_PCT:
        return WARN
    return PASS


def classify_disk(percent: float) -> str:
    if percent > DISK_FAIL_PCT:
        return FAIL
    if percent > DISK_WARN_PCT:
        return WARN
    return PASS


def nearest_existing(path: Path) -> Path:
    """``path`` itself, or its nearest parent that exists (a state dir not created yet)."""
    p = path.expanduser().absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p

"""hw-check's statuses and the Raspberry Pi's throttling flags (``vcgencmd get_throttled``).

Memory, CPU temperature and disk are read and classified by ``common.health``, the one
host-health module (its levels map onto PASS/WARN/FAIL there); what is left here is the Pi's
own firmware report, decoded by a plain function so it is checked without a Pi.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

PASS = "PASS"
WARN = "WARN"
FAIL = "FAIL"
SKIP = "SKIP"

# Bits of `vcgencmd get_throttled` (Raspberry Pi firmware): 0..3 are happening
# now, 16..19 the same conditions "has occurred since boot".
THROTTLE_BITS: dict[int, str] = {
    0: "under-voltage",
    1: "arm frequency capped",
    2: "throttled",
    3: "soft temperature limit",
}
_OCCURRED_SHIFT = 16


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

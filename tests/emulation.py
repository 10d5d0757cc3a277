"""Wall-clock bounds for tests that also run under CPU emulation (`make pi-check`).

`make pi-check` runs the torch-free tests in an arm64 root under qemu-user-static, which is
an order of magnitude slower than the hardware.  A test whose assertion is about speed only
(not about behaviour) marks itself ``@pytest.mark.timing`` and writes its bound as
``wall(seconds)``: the bound is the real one on real CPUs and scaled by
``CONTINUON_EMULATION_SLOWDOWN`` (default 20) when ``CONTINUON_EMULATED=1``.  Everything
else the test asserts (order of events, neutral outputs, exit codes) stays as it is.
"""

from __future__ import annotations

import os

EMULATED = os.environ.get("CONTINUON_EMULATED") == "1"
SLOWDOWN = float(os.environ.get("CONTINUON_EMULATION_SLOWDOWN", "20")) if EMULATED else 1.0


def wall(seconds: float) -> float:
    """``seconds`` on real hardware; scaled under emulation."""
    return seconds * SLOWDOWN

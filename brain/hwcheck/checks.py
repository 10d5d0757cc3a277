"""The hw-check runner and the list of checks it runs, in order.

The checks live in one module per job (i2c, cameras, host, actuators), on a
shared context (context.py) and result type (results.py); this module is the
facade the CLI and the tests import them from.

Each check is a small function ``check(ctx) -> CheckResult`` that can be run
and tested on its own.  A check with nothing to check (the device is not
configured, or simulated) raises :class:`Skip` with a sentence saying why; the
runner turns that into SKIP.  A configured device whose library cannot be
imported or whose bus is absent raises HardwareUnavailable, which becomes FAIL
with the driver's message (package and fix): a robot that cannot drive must not
pass.  Any other exception is FAIL with its text, so that a bug in one check
never hides the results of the others.

Nothing here moves an actuator unless ``ctx.move`` is set (``--move``); without
it the actuator check writes nothing at all, not even neutral.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import traceback
from collections.abc import Callable, Iterable

from brain.hardware.protocols import HardwareUnavailable
from brain.hwcheck.actuators import car_sequence, check_actuators, read_pulse_us, sim_car_state
from brain.hwcheck.cameras import (
    DEPTH_VALID_WARN,
    FPS_TOLERANCE,
    SKEW_LIMIT_S,
    Grab,
    check_camera,
    check_depth,
    check_sync,
    grab,
    pair_skews,
)
from brain.hwcheck.context import CheckContext
from brain.hwcheck.host import check_cpu_temp, check_disk, check_memory, check_throttling
from brain.hwcheck.i2c import SMBUS_HINT, check_i2c, probe_i2c
from brain.hwcheck.results import STATUSES, CheckResult, Skip, count, result, worst
from brain.hwcheck.system import FAIL, PASS, SKIP, WARN

log = logging.getLogger(__name__)

__all__ = [
    "CHECKS",
    "DEPTH_VALID_WARN",
    "FAIL",
    "FPS_TOLERANCE",
    "PASS",
    "SKEW_LIMIT_S",
    "SKIP",
    "SMBUS_HINT",
    "STATUSES",
    "WARN",
    "CheckContext",
    "CheckResult",
    "Grab",
    "Skip",
    "car_sequence",
    "check_actuators",
    "check_camera",
    "check_cpu_temp",
    "check_depth",
    "check_disk",
    "check_i2c",
    "check_memory",
    "check_sync",
    "check_throttling",
    "count",
    "grab",
    "pair_skews",
    "probe_i2c",
    "read_pulse_us",
    "result",
    "run_check",
    "run_checks",
    "sim_car_state",
    "worst",
]


CheckFn = Callable[[CheckContext], CheckResult]

CHECKS: tuple[tuple[str, CheckFn], ...] = (
    ("i2c", check_i2c),
    ("camera", check_camera),
    ("depth", check_depth),
    ("sync", check_sync),
    ("cpu-temp", check_cpu_temp),
    ("throttling", check_throttling),
    ("memory", check_memory),
    ("disk", check_disk),
    ("actuators", check_actuators),
)


def run_check(ctx: CheckContext, name: str, fn: CheckFn) -> CheckResult:
    """One check; Skip becomes SKIP and any other exception FAIL with its text."""
    t0 = time.monotonic()
    try:
        res = fn(ctx)
    except Skip as exc:
        res = result(SKIP, str(exc))
    except HardwareUnavailable as exc:
        res = result(FAIL, str(exc), error=f"{type(exc).__name__}: {exc}")
    except Exception as exc:
        log.debug("check %s crashed", name, exc_info=True)
        res = result(
            FAIL,
            f"the check itself failed: {type(exc).__name__}: {exc}",
            error=f"{type(exc).__name__}: {exc}",
            traceback=traceback.format_exc(limit=8),
        )
    res = dataclasses.replace(res, name=name)
    res.details.setdefault("duration_s", time.monotonic() - t0)
    return res


def run_checks(
    ctx: CheckContext,
    checks: Iterable[tuple[str, CheckFn]] = CHECKS,
    on_result: Callable[[CheckResult], None] | None = None,
) -> list[CheckResult]:
    """Run every check in order, then close what they opened."""
    results: list[CheckResult] = []
    try:
        for name, fn in checks:
            res = run_check(ctx, name, fn)
            results.append(res)
            if on_result is not None:
                on_result(res)
    finally:
        ctx.close()
    return results

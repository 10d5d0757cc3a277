"""Checks of the machine itself: CPU temperature, throttling, memory and disk.

The readings and their levels come from ``common.health`` (the one host-health reading,
shared with the API's /health and the training guard); a level maps onto PASS/WARN/FAIL by
``common.health.HWCHECK_STATUS``, so hw-check and the API never disagree about the host.
"""

from __future__ import annotations

from brain.hwcheck import system
from brain.hwcheck.context import CheckContext
from brain.hwcheck.results import CheckResult, Skip, result
from common.health import HWCHECK_STATUS, HostReading, Level, Thresholds, assess


def _reading(ctx: CheckContext) -> tuple[HostReading, Thresholds]:
    return ctx.read_host(ctx.config.state_dir()), Thresholds.from_config(ctx.config.local_train)


def check_cpu_temp(ctx: CheckContext) -> CheckResult:
    r, t = _reading(ctx)
    celsius = r.temperature_c
    if celsius is None:
        raise Skip(
            "no CPU temperature sensor on this machine (psutil reports none and "
            "/sys/class/thermal/thermal_zone0/temp does not exist)"
        )
    check = assess(r, t).checks["temperature"]
    summary = f"CPU at {celsius:.1f} °C"
    if check.level >= Level.CRITICAL:
        summary += f", above {t.temp_critical_c:g} °C: cool the Pi (heatsink/fan)"
    elif check.level == Level.WARNING:
        summary += f", above {t.temp_warning_c:g} °C (warning level)"
    return result(
        HWCHECK_STATUS[check.level],
        summary,
        celsius=celsius,
        level=check.level.name,
        warn_c=t.temp_warning_c,
        fail_c=t.temp_critical_c,
    )


def check_throttling(ctx: CheckContext) -> CheckResult:
    out = ctx.vcgencmd("get_throttled")
    if out is None:
        raise Skip("vcgencmd is not installed (it exists on Raspberry Pi OS only)")
    state = system.decode_throttled(out)
    return result(state.status, state.summary(), **state.as_dict())


def check_memory(ctx: CheckContext) -> CheckResult:
    r, t = _reading(ctx)
    check = assess(r, t).checks["memory"]
    summary = f"{r.memory_percent:.0f} % used"
    if r.memory_available_bytes is not None and r.memory_total_bytes is not None:
        summary += (
            f", {r.memory_available_bytes / 2**30:.1f} GiB available of "
            f"{r.memory_total_bytes / 2**30:.1f} GiB"
        )
    if check.level > Level.NORMAL:
        summary += (
            f" ({check.level.name}: warning from {t.memory_warning_pct:g} %, failing from "
            f"{t.memory_critical_pct:g} %, emergency from {t.memory_emergency_pct:g} %)"
        )
    return result(
        HWCHECK_STATUS[check.level],
        summary,
        percent=r.memory_percent,
        level=check.level.name,
        total_bytes=r.memory_total_bytes,
        available_bytes=r.memory_available_bytes,
        swap_percent=r.swap_percent,
    )


def check_disk(ctx: CheckContext) -> CheckResult:
    r, t = _reading(ctx)
    disk = r.disk
    if disk is None:  # read_host was given the state dir: only a fake host can get here
        raise Skip("no disk usage in the host reading")
    check = assess(r, t).checks["disk"]
    state_dir = ctx.config.state_dir()
    shown = (
        str(state_dir)
        if disk.measured_at == state_dir.expanduser().absolute()
        else f"{state_dir} (not created yet; measured at {disk.measured_at})"
    )
    summary = f"{disk.percent:.0f} % used, {disk.free_bytes / 2**30:.1f} GiB free at {shown}"
    if check.level >= Level.CRITICAL:
        summary += f": above {t.disk_critical_pct:g} %, episodes and updates will not fit"
    elif check.level == Level.WARNING:
        summary += f" (warning above {t.disk_warning_pct:g} %)"
    return result(
        HWCHECK_STATUS[check.level],
        summary,
        state_dir=str(state_dir),
        measured_at=str(disk.measured_at),
        percent=disk.percent,
        level=check.level.name,
        free_bytes=disk.free_bytes,
        total_bytes=disk.total_bytes,
    )

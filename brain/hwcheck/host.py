"""Checks of the machine itself: CPU temperature, throttling, memory and disk."""

from __future__ import annotations

from brain.hwcheck import system
from brain.hwcheck.context import CheckContext
from brain.hwcheck.results import CheckResult, Skip, result
from brain.hwcheck.system import FAIL, PASS, WARN


def check_cpu_temp(ctx: CheckContext) -> CheckResult:
    celsius = system.read_temperature(ctx.thermal_path)
    if celsius is None:
        raise Skip(f"no CPU temperature sensor: {ctx.thermal_path} does not exist on this machine")
    status, summary = system.classify_temperature(celsius)
    return result(
        status, summary, celsius=celsius, warn_c=system.TEMP_WARN_C, fail_c=system.TEMP_FAIL_C
    )


def check_throttling(ctx: CheckContext) -> CheckResult:
    out = ctx.vcgencmd("get_throttled")
    if out is None:
        raise Skip("vcgencmd is not installed (it exists on Raspberry Pi OS only)")
    state = system.decode_throttled(out)
    return result(state.status, state.summary(), **state.as_dict())


def check_memory(ctx: CheckContext) -> CheckResult:
    import psutil

    vm = psutil.virtual_memory()
    swap = psutil.swap_memory()
    status = system.classify_memory(vm.percent)
    levels = (
        f"(warning from {system.MEMORY_WARN_PCT:g} %, failing from {system.MEMORY_FAIL_PCT:g} %)"
    )
    summary = (
        f"{vm.percent:.0f} % used, {vm.available / 2**30:.1f} GiB available of "
        f"{vm.total / 2**30:.1f} GiB"
    )
    if status != PASS:
        summary += f" {levels}"
    return result(
        status,
        summary,
        percent=vm.percent,
        total_bytes=vm.total,
        available_bytes=vm.available,
        swap_percent=swap.percent,
    )


def check_disk(ctx: CheckContext) -> CheckResult:
    import psutil

    state_dir = ctx.config.state_dir()
    where = system.nearest_existing(state_dir)
    usage = psutil.disk_usage(str(where))
    status = system.classify_disk(usage.percent)
    shown = (
        str(state_dir)
        if where == state_dir.expanduser().absolute()
        else (f"{state_dir} (not created yet; measured at {where})")
    )
    summary = f"{usage.percent:.0f} % used, {usage.free / 2**30:.1f} GiB free at {shown}"
    if status == FAIL:
        summary += f": above {system.DISK_FAIL_PCT:g} %, episodes and updates will not fit"
    elif status == WARN:
        summary += f" (warning above {system.DISK_WARN_PCT:g} %)"
    return result(
        status,
        summary,
        state_dir=str(state_dir),
        measured_at=str(where),
        percent=usage.percent,
        free_bytes=usage.free,
        total_bytes=usage.total,
    )

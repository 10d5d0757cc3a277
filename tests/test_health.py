"""common.health: the one host-health reading and classification, and its three users.

Readings are injected as the typed snapshot (HostReading); psutil is only exercised by the
test that reads this machine.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from brain.config import Config, LocalTrainConfig
from brain.hwcheck.checks import (
    CheckContext,
    check_cpu_temp,
    check_disk,
    check_memory,
    run_check,
)
from brain.localtrain.guard import Action, ProcessGuard
from common.health import (
    API_STATUS,
    HWCHECK_STATUS,
    DiskReading,
    HostReading,
    Level,
    Thresholds,
    assess,
    read_host,
    read_temperature,
)
from edge_agent.api.routes import health_checks

N, W, C, E = Level.NORMAL, Level.WARNING, Level.CRITICAL, Level.EMERGENCY


def disk(percent: float) -> DiskReading:
    return DiskReading(Path("/state"), Path("/state"), percent, 2**30, 10 * 2**30)


@pytest.mark.parametrize(
    ("percent", "level"),
    [(0, N), (74.9, N), (75.0, W), (75.1, W), (84.9, W), (85.0, C), (85.1, C), (89.9, C),
     (90.0, E), (90.1, E), (100, E)],
)  # fmt: skip
def test_memory_levels_at_and_around_each_threshold(percent: float, level: Level) -> None:
    a = assess(HostReading(percent))
    assert a.level is level and a.checks["memory"].level is level
    assert bool(a.reasons) == (level is not N)


@pytest.mark.parametrize(
    ("celsius", "level"),
    [(20, N), (69.9, N), (70.0, N), (70.1, W), (79.9, W), (80.0, W), (80.1, C), (84.9, C),
     (85.0, E), (95, E)],
)  # fmt: skip
def test_temperature_levels_at_and_around_each_threshold(celsius: float, level: Level) -> None:
    a = assess(HostReading(10.0, celsius))
    assert a.level is level and a.checks["temperature"].level is level


@pytest.mark.parametrize(
    ("percent", "level"),
    [(10, N), (79.9, N), (80.0, N), (80.1, W), (89.9, W), (90.0, W), (90.1, C), (100, C)],
)
def test_disk_levels_at_and_around_each_threshold(percent: float, level: Level) -> None:
    a = assess(HostReading(10.0, disk=disk(percent)))
    assert a.level is level and a.checks["disk"].level is level


def test_the_worst_check_wins_and_unknown_values_are_skipped() -> None:
    a = assess(HostReading(80.0, 81.0, disk=disk(50)))
    assert a.level is C
    assert {k: c.level for k, c in a.checks.items()} == {"memory": W, "temperature": C, "disk": N}
    assert "memory 80 % >= 75 %" in a.reasons and "CPU 81 C > 80 C" in a.reasons
    assert set(assess(HostReading(50.0)).checks) == {"memory"}  # no sensor, no disk asked


def test_thresholds_from_the_local_train_config_and_their_order() -> None:
    t = Thresholds.from_config(LocalTrainConfig(memory_critical_pct=80, temp_critical_c=75))
    assert (t.memory_warning_pct, t.memory_critical_pct, t.temp_critical_c) == (75, 80, 75)
    assert t.disk_critical_pct == 90  # not a config key: DESIGN's value
    assert assess(HostReading(82.0), t).level is C
    with pytest.raises(ValueError, match="memory levels"):
        Thresholds(memory_warning_pct=90, memory_critical_pct=85)


def test_read_temperature_sensors_then_thermal_zone(tmp_path: Path) -> None:
    zone = tmp_path / "temp"
    zone.write_text("72500\n")
    core = SimpleNamespace
    found = {"coretemp": [core(current=55.0), core(current=61.0)], "nvme": [core(current=90.0)]}
    assert read_temperature(zone, lambda: found) == 61.0  # hottest CPU core, not the SSD
    assert read_temperature(zone, lambda: {}) == 72.5  # the Pi's zone, in millidegrees
    assert read_temperature(tmp_path / "none", lambda: {}) is None


def test_read_host_reads_this_machine(tmp_path: Path) -> None:
    r = read_host(tmp_path / "not" / "yet")
    assert 0.0 < r.memory_percent < 100.0
    assert r.disk is not None and r.disk.measured_at == tmp_path and 0 < r.disk.percent <= 100
    assert r.temperature_c is None or -40 < r.temperature_c < 150
    assert read_host().disk is None


# ----------------------------------------------------------------------------- the three users


class OneReading:
    def __init__(self, reading: HostReading) -> None:
        self.reading = reading

    def read(self) -> HostReading:
        return self.reading


def guard_level(reading: HostReading) -> tuple[Level, Action]:
    sent: list[int] = []
    guard = ProcessGuard(
        pid=2**22 + 1,  # nobody: signals are recorded, never sent
        thresholds=Thresholds.from_config(Config().local_train),
        reader=OneReading(reading),
        stop_fn=lambda why: None,
        signal_fn=lambda pid, sig: sent.append(sig),
    )
    action = guard.check()
    assert guard.last is not None
    return guard.last.level, action


def hwcheck_status(reading: HostReading, fn: Any) -> str:
    ctx = CheckContext(Config(), read_host=lambda path: reading)
    return str(run_check(ctx, "host", fn).status)


READINGS = [
    HostReading(50.0, 45.0, disk=disk(50)),
    HostReading(75.0, 45.0, disk=disk(50)),
    HostReading(85.0, 45.0, disk=disk(50)),
    HostReading(90.0, 45.0, disk=disk(50)),
    HostReading(50.0, 70.5, disk=disk(50)),
    HostReading(50.0, 80.5, disk=disk(50)),
    HostReading(50.0, 86.0, disk=disk(50)),
    HostReading(50.0, 45.0, disk=disk(85)),
    HostReading(50.0, 45.0, disk=disk(95)),
]


@pytest.mark.parametrize("reading", READINGS)
def test_hwcheck_api_and_guard_report_the_same_level(reading: HostReading) -> None:
    a = assess(reading)
    api = health_checks(Config(), reading)
    for name, api_key, fn in (
        ("memory", "memory", check_memory),
        ("temperature", "cpu_temp", check_cpu_temp),
        ("disk", "disk", check_disk),
    ):
        level = a.checks[name].level
        assert hwcheck_status(reading, fn) == HWCHECK_STATUS[level], name
        assert api[api_key]["status"] == API_STATUS[level], name
    # The guard judges memory and temperature (a full disk is not the trainer's to fix).
    guarded = max(a.checks["memory"].level, a.checks["temperature"].level)
    level, action = guard_level(reading)
    assert level is guarded
    assert action is {N: Action.NONE, W: Action.NONE, C: Action.PAUSE, E: Action.STOP}[level]


def test_memory_at_85_is_critical_for_all_three() -> None:
    """The finding: hw-check passed 85-90 % as a warning while the API called it critical."""
    reading = HostReading(87.0, None, disk=disk(10))
    assert hwcheck_status(reading, check_memory) == "FAIL"
    assert health_checks(Config(), reading)["memory"]["status"] == "critical"
    assert guard_level(reading) == (C, Action.PAUSE)

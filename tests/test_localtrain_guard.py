"""The resource guard: levels from memory and temperature, and what it does to a real process.

The readings come from an injected reader (psutil sits only at that boundary); the signals
go to a real child process, whose state is read back from /proc.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from brain.localtrain.guard import Action, ProcessGuard, PsutilReader
from common.health import HostReading as Readings
from common.health import Level, Thresholds, assess

T = Thresholds()


@pytest.mark.parametrize(
    ("mem", "temp", "level"),
    [
        (10.0, None, Level.NORMAL),
        (74.9, 40.0, Level.NORMAL),
        (75.0, None, Level.WARNING),
        (84.9, None, Level.WARNING),
        (85.0, None, Level.CRITICAL),
        (89.9, None, Level.CRITICAL),
        (90.0, None, Level.EMERGENCY),
        (99.0, None, Level.EMERGENCY),
        (50.0, 70.0, Level.NORMAL),  # "> 70 C" is a warning, 70 itself is not
        (50.0, 70.5, Level.WARNING),
        (50.0, 80.5, Level.CRITICAL),
        (50.0, 86.0, Level.EMERGENCY),
        (80.0, 81.0, Level.CRITICAL),  # the worse of the two wins
        (91.0, 71.0, Level.EMERGENCY),
    ],
)
def test_levels_follow_the_field_defaults(mem, temp, level):
    a = assess(Readings(mem, temp), T)
    assert a.level is level
    assert bool(a.reasons) == (level is not Level.NORMAL)


def test_reasons_name_the_resource():
    a = assess(Readings(87.0, 82.0), T)
    assert any("memory 87 %" in r for r in a.reasons)
    assert any("CPU 82 C" in r for r in a.reasons)
    assert a.to_dict()["level"] == "CRITICAL"


def test_psutil_reader_reads_this_machine():
    r = PsutilReader().read()
    assert 0.0 < r.memory_percent < 100.0
    assert r.temperature_c is None or -40 < r.temperature_c < 150


class Script:
    """A reader that replays memory percentages."""

    def __init__(self, values):
        self.values = list(values)

    def read(self) -> Readings:
        return Readings(self.values.pop(0))


def proc_state(pid: int) -> str:
    """The one-letter state from /proc/<pid>/stat ('T' = stopped)."""
    deadline = time.monotonic() + 2.0
    text = Path(f"/proc/{pid}/stat").read_text()
    state = text.rsplit(")", 1)[1].split()[0]
    while time.monotonic() < deadline and state not in "TSR":
        time.sleep(0.01)
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state


def wait_state(pid: int, want: set[str]) -> str:
    deadline = time.monotonic() + 3.0
    st = proc_state(pid)
    while st not in want and time.monotonic() < deadline:
        time.sleep(0.01)
        st = proc_state(pid)
    return st


@pytest.fixture
def child():
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield p
    if p.poll() is None:
        p.send_signal(signal.SIGCONT)
        p.kill()
        p.wait()


def test_critical_pauses_and_dropping_resumes_a_real_process(child):
    sent: list[int] = []
    stops: list[str] = []

    def send(pid, sig):
        sent.append(sig)
        import os

        os.kill(pid, sig)

    g = ProcessGuard(
        child.pid, T, Script([50, 80, 86, 88, 80, 60]), stop_fn=stops.append, signal_fn=send
    )
    assert g.check() is Action.NONE  # NORMAL
    assert g.check() is Action.NONE  # WARNING: nothing to do yet
    assert wait_state(child.pid, {"S", "R"}) in "SR"
    assert g.check() is Action.PAUSE  # CRITICAL
    assert wait_state(child.pid, {"T"}) == "T"
    assert g.check() is Action.NONE  # still CRITICAL: already paused, no second SIGSTOP
    assert g.check() is Action.RESUME  # WARNING again
    assert wait_state(child.pid, {"S", "R"}) in "SR"
    assert g.check() is Action.NONE
    assert sent == [signal.SIGSTOP, signal.SIGCONT]
    assert g.pauses == 1 and not stops
    assert child.poll() is None


def test_emergency_unpauses_then_stops(child):
    stops: list[str] = []

    def stop(why: str) -> None:
        stops.append(why)
        child.terminate()

    g = ProcessGuard(child.pid, T, Script([87, 95, 95]), stop_fn=stop)
    assert g.check() is Action.PAUSE
    assert wait_state(child.pid, {"T"}) == "T"
    assert g.check() is Action.STOP
    assert stops and "memory 95 %" in stops[0]
    assert not g.paused
    assert child.wait(5) == -signal.SIGTERM  # it was running again, so it saw the SIGTERM
    assert g.check() is Action.NONE  # stopped once only


def test_a_vanished_process_is_not_an_error():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    g = ProcessGuard(p.pid, T, Script([88, 50]), stop_fn=lambda why: None)
    assert g.check() is Action.PAUSE
    assert g.check() is Action.RESUME

"""The e-stop line (SIGUSR1) on the real daemon in this process: it needs no event loop."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from pathlib import Path

import pytest

from brain import estop_client
from brain.control.estop_line import ACK_FILE, PID_FILE
from brain.modes import Mode
from tests.daemon_helpers import RecordingActuators, make_daemon, start_daemon, stop_daemon


def _drive(daemon):
    daemon.brain.set_mode("manual")
    daemon.brain.teleop([0.0, 0.5])


@pytest.mark.parametrize(
    "trigger",
    # frame (the default) in the fast lane; the timer twin waits as long again: make test
    ["frame", pytest.param("timer", marks=pytest.mark.slow)],
)
def test_signal_latches_while_the_event_loop_is_blocked(tmp_path, trigger):
    """The loop is stuck (as if saturated); `continuon estop`'s signal still stops the car."""

    async def body():
        daemon, act = make_daemon(tmp_path, **{"safety.slew_per_s": {}, "control.trigger": trigger})
        task = await start_daemon(daemon)
        for _ in range(10):
            _drive(daemon)
            await asyncio.sleep(0.05)
        t_sig = []
        acks = []
        run_dir = daemon.config.runtime_dir()

        def press():  # what `continuon estop` does, from another thread
            time.sleep(0.2)
            t_sig.append(time.monotonic())
            acks.append(estop_client.signal_estop(run_dir))

        threading.Thread(target=press).start()
        daemon.brain.teleop([0.0, 0.5])
        time.sleep(1.0)  # blocks the event loop: no API, no control socket, no asyncio handler
        mode_while_blocked = daemon.modes.mode
        await stop_daemon(daemon, task)
        return act.snapshot(), t_sig[0], mode_while_blocked, daemon, acks

    calls, t_sig, mode, daemon, acks = asyncio.run(body())
    assert acks and acks[0]["state"] == "latched", acks
    assert mode is Mode.ESTOP
    assert "SIGUSR1" in daemon.modes.estop_reason
    assert any(k == "write" and t < t_sig for t, k, _ in calls), "the car never drove"
    after = [(t, k) for t, k, _ in calls if t >= t_sig]
    # A tick that began before the latch (the signal takes a few ms to get there) may
    # still finish its one write; then neutral, and nothing else.
    first = next(i for i, (_, k) in enumerate(after) if k == "neutral")
    assert first <= 1 and after[first][0] - t_sig < 0.1, after[:3]
    assert all(k == "neutral" for _, k in after[first:])
    ack = json.loads((tmp_path / "state" / "run" / ACK_FILE).read_bytes())
    assert ack["seq"] == 1 and ack["mode"] == "estop" and ack["neutral_by"] == "control"
    assert not (tmp_path / "state" / "run" / PID_FILE).exists()  # removed on shutdown


class StuckActuators(RecordingActuators):
    """A driver whose write hangs (an I2C bus that stopped answering)."""

    def __init__(self, inner):
        super().__init__(inner)
        self.stuck = threading.Event()
        self.release = threading.Event()

    def write(self, action):
        super().write(action)
        if self.stuck.is_set():
            self.release.wait(3.0)


def test_signal_writes_neutral_itself_when_the_control_thread_hangs(tmp_path):
    async def body():
        daemon, rec = make_daemon(tmp_path, **{"safety.slew_per_s": {}})
        act = StuckActuators(rec.inner)
        daemon.devices.actuators = act
        daemon.control.actuators = act
        task = await start_daemon(daemon)
        for _ in range(6):
            _drive(daemon)
            await asyncio.sleep(0.05)
        act.stuck.set()
        daemon.brain.teleop([0.0, 0.5])
        await asyncio.sleep(0.2)  # the control thread is now inside a hung write()
        run_dir = daemon.config.runtime_dir()
        t0 = time.monotonic()
        ack = await asyncio.to_thread(estop_client.signal_estop, run_dir)
        act.release.set()
        await stop_daemon(daemon, task)
        return act.snapshot(), t0, ack

    calls, t0, ack = asyncio.run(body())
    assert ack is not None and ack["state"] == "latched" and ack["neutral_by"] == "direct"
    first = next(t for t, k, _ in calls if t >= t0 and k == "neutral")
    assert first - t0 < 0.5


def test_fast_path_refuses_a_stale_pid_file(tmp_path):
    """A pid file left by a dead daemon names a pid that may be someone else's now."""
    run = tmp_path / "run"
    run.mkdir()
    (run / PID_FILE).write_text(json.dumps({"pid": os.getpid(), "start_ticks": 1}))
    assert estop_client.signal_estop(run) is None  # start time differs: not signalled
    cfg = tmp_path / "robot.yaml"
    cfg.write_text(f"paths:\n  runtime_dir: {run}\n")
    assert estop_client.candidate_dirs(cfg) == [run]  # named: never another daemon's
    bare = tmp_path / "bare.yaml"
    bare.write_text("robot:\n  id: r\n")
    assert estop_client.candidate_dirs(bare)[-1] == Path("/run/continuon")
    assert estop_client.run(cfg) is None  # so the CLI falls back to the control socket

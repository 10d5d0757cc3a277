"""Recording inside the daemon: mode flags, episode boundaries, CLI, refusal, crash recovery."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from brain.cli import main
from brain.config import parse_config
from brain.daemon import Daemon
from brain.interface import CommandError
from rlds.reader import list_episodes, list_interrupted
from tests.daemon_helpers import sim_config

ROOT = Path(__file__).resolve().parent.parent


def run_session(tmp_path, script, **overrides):
    """Start the daemon in-process, run ``script(daemon)`` (async), stop it."""
    cfg = parse_config(sim_config(tmp_path, **overrides))

    async def body():
        daemon = Daemon(cfg, services=[])
        task = asyncio.create_task(daemon.run())
        await daemon.wait_ready(10)
        for _ in range(500):  # the sim builds its textures before the first frame
            if daemon.sensors.latest()[0] is not None:
                break
            await asyncio.sleep(0.01)
        try:
            return await script(daemon)
        finally:
            daemon.request_stop("test")
            await asyncio.wait_for(task, 10)

    return cfg, asyncio.run(body())


async def drive(daemon, seconds, action=(0.2, 0.4)):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        daemon.brain.teleop(list(action))
        await asyncio.sleep(0.04)


@pytest.mark.slow
def test_manual_records_and_a_mode_change_ends_the_episode(tmp_path):
    async def script(d):
        d.brain.start_recording(["test-run"])
        d.brain.set_mode("manual")
        await drive(d, 1.0)
        d.brain.set_mode("autonomous")  # expert drives; record_autonomous is on in sim-donkey
        await asyncio.sleep(1.0)
        d.brain.set_mode("idle")
        await asyncio.sleep(0.3)
        return d.brain.status().to_json()["recording"]

    cfg, status = run_session(tmp_path, script, **{"safety.slew_per_s": {}})
    eps = list_episodes(cfg.episodes_dir())
    assert [e.metadata["mode"] for e in eps] == ["manual", "autonomous"]
    assert status["steps_dropped"] == 0
    manual = eps[0]
    assert manual.metadata["robot_id"] == cfg.robot.id
    assert manual.metadata["config_hash"] == cfg.config_hash()
    assert manual.metadata["action_names"] == ["steering", "throttle"]
    assert "test-run" in manual.metadata["tags"]
    assert "operator" not in json.dumps(manual.metadata)
    steps = list(manual.steps())
    assert len(steps) == manual.num_steps >= 15
    assert steps[0].is_first and steps[-1].is_last and not steps[-1].is_terminal
    assert sum(s.is_first for s in steps) == 1 and sum(s.is_last for s in steps) == 1
    assert steps[0].observation["image"].shape == (120, 160, 3)
    # what the loop actually wrote to the actuators is what was recorded
    driven = [s for s in steps if not s.extra.get("neutral")]
    assert driven and np.allclose(driven[-1].action, [0.2, 0.4])
    ts = [s.t for s in steps]
    assert all(b > a for a, b in itertools.pairwise(ts))
    auto = list(eps[1].steps(decode_images=False))
    assert {s.extra["source"] for s in auto} == {"expert"}


def test_nothing_recorded_unless_started_or_in_idle(tmp_path):
    async def script(d):
        d.brain.set_mode("manual")
        await drive(d, 0.5)  # not armed
        d.brain.set_mode("idle")
        d.brain.start_recording()
        await asyncio.sleep(0.5)  # armed, but IDLE does not record
        d.brain.stop_recording()

    cfg, _ = run_session(tmp_path, script)
    assert list_episodes(cfg.episodes_dir()) == []


def test_recording_refused_below_free_space_floor(tmp_path):
    async def script(d):
        with pytest.raises(CommandError, match="free"):
            d.brain.start_recording()
        return d.brain.status().to_json()["recording"]["armed"]

    _, armed = run_session(tmp_path, script, **{"recording.min_free_mb": 1e12})
    assert armed is False


@pytest.mark.integration
def test_sigkill_while_recording_is_recovered_on_restart(tmp_path):
    raw = sim_config(tmp_path)
    cfg_path = tmp_path / "robot.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "brain.cli", "run", "--config", str(cfg_path)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    ctl = tmp_path / "state" / "run" / "control.sock"
    try:
        for _ in range(200):
            if ctl.exists():
                break
            time.sleep(0.05)
        assert main(["record", "start", "--config", str(cfg_path)]) == 0
        assert main(["mode", "autonomous", "--config", str(cfg_path)]) == 0
        time.sleep(2.5)  # > 1 s fsync interval, well over min_steps
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
    episodes = tmp_path / "state" / "episodes"
    assert len(list_interrupted(episodes)) == 1
    assert list_episodes(episodes) == []
    # the CLI reports and recovers it, as the daemon would at its next start
    assert main(["episodes", "recover", "--config", str(cfg_path)]) == 0
    eps = list_episodes(episodes)
    assert len(eps) == 1 and eps[0].truncated and eps[0].num_steps >= 10
    steps = list(eps[0].steps(decode_images=False))
    assert steps[-1].is_last and not steps[-1].is_terminal
    assert main(["episodes", "validate", "--config", str(cfg_path)]) == 0

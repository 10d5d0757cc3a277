"""The manager: start conditions, the worker subprocess, NDJSON progress, guard, stop/resume.

Start conditions are checked without torch (the manager lives in the daemon).  One real
worker subprocess is started, paused and resumed by the guard (scripted memory readings,
real SIGSTOP/SIGCONT), stopped with a checkpoint and resumed to the end.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from brain.config import Config
from brain.localtrain.manager import LocalTrainManager, StartRefused
from brain.modes import ModeManager
from common.health import HostReading as Readings
from tests.localtrain_helpers import commit_cloud_base, write_episodes
from tests.waiting import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.torch]


class Dial:
    """A reader the test turns: memory and temperature as it likes."""

    def __init__(self, mem=40.0, temp=None, battery=None, plugged=None):
        self.mem, self.temp, self.battery, self.plugged = mem, temp, battery, plugged

    def read(self) -> Readings:
        return Readings(self.mem, self.temp, self.battery, self.plugged)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    pytest.importorskip("torch")  # the base checkpoint is made with torch (the train extra)
    root = tmp_path_factory.mktemp("ltm")
    write_episodes(root / "episodes", 17, steps=24)
    subprocess.run(  # the base model, written without importing torch here
        [
            sys.executable,
            "-c",
            "import sys; from tests.localtrain_helpers import tiny_base; tiny_base(__import__"
            "('pathlib').Path(sys.argv[1]))",
            str(root / "base.pt"),
        ],
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    return root


def config(world: Path, tmp_path: Path, *, committed: bool = True, **lt) -> Config:
    """The robot's config; ``committed``: its OTA slot holds a cloud bundle of base.pt."""
    if committed:
        commit_cloud_base(tmp_path / "state" / "ota", world / "base.pt")
    return Config.model_validate(
        {
            "paths": {"state_dir": str(tmp_path / "state")},
            "recording": {"root": str(world / "episodes")},
            "local_train": {
                "base_model": str(world / "base.pt"),
                "window": 8,
                "guard_interval_s": 0.05,
                "gate_closed_loop": False,
                **lt,
            },
        }
    )


def refused(mgr: LocalTrainManager, opts=None) -> list[str]:
    with pytest.raises(StartRefused) as ei:
        mgr.start(opts or {})
    return ei.value.problems


def test_start_conditions_each_refused_with_a_clear_message(world, tmp_path):
    modes = ModeManager()
    moving = [False]
    dial = Dial()
    mgr = LocalTrainManager(
        config(world, tmp_path), modes=modes, is_moving=lambda: moving[0], reader=dial
    )
    assert mgr.check_start() == []

    modes.set_mode("manual")
    assert refused(mgr) == ["the robot is in manual mode; switch to idle first"]
    modes.set_mode("idle")

    moving[0] = True
    assert refused(mgr) == ["the robot is moving; stop it first"]
    moving[0] = False

    dial.temp = 75.0
    (msg,) = refused(mgr)
    assert "too hot (75 C > 70 C)" in msg
    dial.temp = 50.0

    dial.mem = 87.0
    (msg,) = refused(mgr)
    assert msg.startswith("resources too low: memory 87 %")
    dial.mem = 40.0

    dial.battery, dial.plugged = 12.0, False
    (msg,) = refused(mgr)
    assert "battery at 12 %" in msg
    dial.plugged = True  # on mains the battery level does not matter
    assert mgr.check_start() == []

    (msg,) = refused(LocalTrainManager(config(world, tmp_path, min_episodes=40), reader=Dial()))
    assert msg == "only 17 recorded episode(s) with camera images; at least 40 are needed"
    assert modes.mode.value == "idle"  # nothing was started


def test_disabled_and_too_few_episodes(world, tmp_path):
    mgr = LocalTrainManager(config(world, tmp_path, enabled=False, min_episodes=100), reader=Dial())
    problems = refused(mgr)
    assert problems[0] == "local training is disabled (local_train.enabled: false)"
    assert "at least 100 are needed" in problems[1]


def proc_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


@pytest.mark.slow
def test_worker_runs_is_paused_by_the_guard_stops_and_resumes(world, tmp_path):
    modes = ModeManager()
    dial = Dial()
    cfg = config(world, tmp_path, steps=120, checkpoint_every=5, promote=False)
    mgr = LocalTrainManager(cfg, modes=modes, reader=dial)
    st = mgr.start({})
    assert modes.mode.value == "training"
    pid = st["pid"]
    wait_until(lambda: (mgr.status()["step"] or 0) >= 3, timeout=60, what="training progress")
    assert mgr.status()["state"] == "running"

    dial.mem = 87.0  # CRITICAL: the worker is frozen
    wait_until(lambda: mgr.status()["paused"], timeout=60, what="pause")
    wait_until(lambda: proc_state(pid) == "T", timeout=5, what="SIGSTOP")
    st = mgr.status()
    assert st["state"] == "paused" and st["resource"]["level"] == "CRITICAL"
    frozen_at = st["step"]
    time.sleep(0.5)
    assert mgr.status()["step"] == frozen_at  # no progress while stopped
    dial.mem = 80.0  # WARNING: it runs again
    wait_until(lambda: not mgr.status()["paused"], timeout=60, what="resume")
    wait_until(
        lambda: (mgr.status()["step"] or 0) > frozen_at + 2,
        timeout=60,
        what="progress after resume",
    )
    assert mgr.status()["pauses"] == 1

    mgr.stop()
    st = mgr.wait(60)
    assert st["state"] == "stopped", st
    assert "resume to continue" in st["message"]
    assert modes.mode.value == "idle"
    run = mgr.run_dir(st)
    assert run.parent == cfg.localtrain_dir() / "runs"
    events = [json.loads(x) for x in (run / "progress.ndjson").read_text().splitlines()]
    steps = [e["step"] for e in events if e["event"] == "progress"]
    assert steps == list(range(1, len(steps) + 1))  # one line per step, in order
    stopped_at = next(e["step"] for e in events if e["event"] == "stopped")
    assert (run / "checkpoint.pt").is_file()

    st = mgr.start({"resume": True})  # continue the same run
    assert mgr.run_dir(st) == run
    st = mgr.wait(120)
    assert modes.mode.value == "idle"
    events = [json.loads(x) for x in (run / "progress.ndjson").read_text().splitlines()]
    started = [e for e in events if e["event"] == "started"]
    assert started[-1]["resumed"] is True and started[-1]["step"] == stopped_at
    assert st["state"] == "finished", st
    res = json.loads((run / "result.json").read_text())
    assert res["ended_by"] == "steps" and res["steps"] == 120
    assert (run / "adapter" / "adapter_config.json").is_file()
    assert st["last_result"]["result"]["gate"]["accepted"] in (True, False)

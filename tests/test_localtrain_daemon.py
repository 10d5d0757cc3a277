"""The daemon runs a local fine-tune: TRAINING mode (no motion, teleop ignored), back to IDLE.

The simulated robot with the real control loop and a real worker subprocess; the daemon
process itself never imports torch.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest

from brain.interface import CommandError
from brain.localtrain.job import TrainJob
from brain.modes import Mode
from common.digest import sha256_file
from tests.daemon_helpers import make_daemon, start_daemon, stop_daemon
from tests.localtrain_helpers import commit_cloud_base, write_episodes

pytestmark = [pytest.mark.slow, pytest.mark.torch]

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_training_mode_holds_still_and_returns_to_idle(tmp_path):
    pytest.importorskip("torch")  # the base checkpoint and the worker need the train extra
    write_episodes(tmp_path / "episodes", 16, steps=20)
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, pathlib; from tests.localtrain_helpers import tiny_base; "
            "tiny_base(pathlib.Path(sys.argv[1]))",
            str(tmp_path / "base.pt"),
        ],
        check=True,
        cwd=ROOT,
    )

    # the robot drives a cloud bundle exported from base.pt: the only model it may fine-tune
    manifest_sha = commit_cloud_base(tmp_path / "state" / "ota", tmp_path / "base.pt")

    async def body():
        daemon, act = make_daemon(
            tmp_path,
            **{
                "recording.root": str(tmp_path / "episodes"),
                "local_train.base_model": str(tmp_path / "base.pt"),
                "local_train.steps": 15,
                "local_train.window": 8,
                "local_train.gate_closed_loop": False,
                "ota.health_window_s": 0.5,
                "ota.max_deadline_misses": 50,
            },
        )
        task = await start_daemon(daemon)
        brain = daemon.brain
        try:
            brain.set_mode("manual")
            with pytest.raises(CommandError, match="manual mode; switch to idle"):
                brain.start_training({})
            brain.set_mode("idle")
            await asyncio.sleep(0.2)

            st = brain.start_training({}).to_json()
            assert st["state"] in ("starting", "running")
            assert daemon.modes.mode is Mode.TRAINING
            assert brain.status().to_json()["flags"]["motion"] is False
            with pytest.raises(CommandError, match="already running"):
                brain.start_training({})
            t_training = time.monotonic()
            seen_training = False
            while brain.training_status().to_json()["state"] not in (
                "finished",
                "failed",
                "stopped",
            ):
                if daemon.modes.mode is Mode.TRAINING:
                    seen_training = True
                    brain.teleop([1.0, 1.0])  # ignored: TRAINING allows no motion
                await asyncio.sleep(0.1)
                assert time.monotonic() - t_training < 120, brain.training_status().to_json()
            st = brain.training_status().to_json()
            assert st["state"] == "finished", st
            assert seen_training
            assert daemon.modes.mode is Mode.IDLE
            # every actuator call while training was neutral
            calls = [c for c in act.snapshot() if c[0] >= t_training]
            assert calls and all(kind == "neutral" for _, kind, _ in calls)
            res = st["last_result"]["result"]
            assert res["steps"] == 15
            work = daemon.config.localtrain_dir()
            assert (work / res["adapter"] / "adapter_config.json").is_file()
            assert str(tmp_path) not in repr(st)  # the status names no path on the robot
            job = TrainJob.read(work / st["run_dir"] / "job.json")
            assert job.base_sha256 == res["base_sha256"] == sha256_file(tmp_path / "base.pt")
            assert (job.base_version, job.base_manifest_sha256) == ("1.4.0", manifest_sha)
            promo = st["last_result"].get("promotion")
            if res["gate"]["accepted"]:  # derived from the committed bundle: installed
                assert promo and promo["installed"], promo
                assert promo["version"].startswith("1.4.0+local.")
                # the robot now drives the local derivative: it is not a base to train from
                with pytest.raises(CommandError, match="is itself a local fine-tune"):
                    brain.start_training({})
                assert daemon.modes.mode is Mode.IDLE
            else:
                assert promo is None
        finally:
            await stop_daemon(daemon, task)

    asyncio.run(body())


def test_daemon_process_does_not_import_torch_with_local_training():
    code = (
        "import sys; from brain.daemon import Daemon; import brain.localtrain.manager, "
        "brain.localtrain.gate, brain.localtrain.promote, brain.localtrain.wiring; "
        "bad = [m for m in ('torch', 'peft') if m in sys.modules]; print(bad); "
        "sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr

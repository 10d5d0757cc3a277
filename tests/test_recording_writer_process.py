"""The episode writer runs in its own process (issue 18, deliverable 2).

* SIGKILL of the writer alone: the daemon keeps driving, the episode it was
  writing is recovered, a new writer is started and records the next episode,
  and status/stats report the restart.
* A full hand-over (the writer stopped with SIGSTOP) drops steps and counts
  them; the control thread's hook never waits.
* The control process itself encodes nothing: no encoder thread in it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import numpy as np
import pytest

from brain.config import parse_config
from brain.control.loop import Step
from brain.daemon import _sensor_specs
from brain.hardware.protocols import Frame
from brain.modes import Mode
from brain.recorder import FRAME_SLOTS, Recorder
from rlds.reader import list_episodes, list_interrupted
from rlds.validate import validate_episode
from tests.daemon_helpers import sim_config, spawn_daemon
from tests.test_recording_daemon import run_session


async def until(pred, timeout: float, step: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        await asyncio.sleep(step)
    return pred()


@pytest.mark.slow  # records, kills, waits for the restart and 30 more steps: ~4 s of driving
def test_sigkill_of_the_writer_alone_is_recovered_and_the_writer_restarted(tmp_path):
    async def script(d):
        brain = d.brain
        brain.start_recording(["writer-kill"])
        brain.set_mode("autonomous")  # the sim expert drives; sim-donkey records it
        rec = lambda: brain.status().to_json()["recording"]  # noqa: E731
        assert await until(lambda: rec()["steps_written"] >= 40, 20), rec()
        first = rec()
        victim = first["writer_process"]["pid"]
        assert victim and victim != os.getpid()
        ticks0 = d.control.timing.ticks
        t0 = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        assert await until(lambda: rec()["writer_process"]["restarts"] == 1, 10), rec()
        assert await until(lambda: rec()["writer_process"]["alive"], 10), rec()
        # the new writer records a new episode: steps reach the disk again
        written = rec()["steps_written"]
        assert await until(lambda: rec()["steps_written"] >= written + 30, 20), rec()
        ticks = d.control.timing.ticks - ticks0
        elapsed = time.monotonic() - t0
        status, stats = brain.status().to_json(), brain.stats().to_json()
        brain.set_mode("idle")  # ends (commits) the second episode
        assert await until(lambda: not rec()["recording"], 10)
        return first, victim, status, stats, ticks, elapsed

    depth = {"driver": "sim", "width": 160, "height": 120, "fps": 30}
    _, (first, victim, status, stats, ticks, elapsed) = run_session(
        tmp_path, script, **{"hardware.depth": depth}
    )
    rec = status["recording"]
    wp = rec["writer_process"]
    assert wp["restarts"] == 1 and wp["last_exit"] == "was killed by SIGKILL"
    assert wp["pid"] != victim and wp["alive"]
    # the daemon kept driving through it: the loop ticked at its rate, the car moved
    assert status["mode"] == "autonomous"
    assert ticks >= 0.6 * 20 * elapsed, (ticks, elapsed)
    assert stats["control"]["faults"]["recorder"] == 0
    assert stats["sim"]["speed_mps"] > 0.1 and stats["control"]["last_neutral"] is False
    assert rec["armed"] and rec["fault"] is None
    assert stats["recording"]["writer_process"]["restarts"] == 1

    episodes = tmp_path / "state" / "episodes"
    assert list_interrupted(episodes) == []
    eps = {e.episode_id: e for e in list_episodes(episodes)}
    killed = eps.pop(first["episode_id"])
    assert killed.truncated and killed.num_steps >= 10  # recovered, not lost
    last = list(killed.steps())[-1]
    assert last.observation["depth"].shape == (120, 160)
    assert last.observation["depth"].dtype == np.uint16 and last.observation["depth"].any()
    assert validate_episode(killed.path).ok, validate_episode(killed.path).render()
    (after,) = eps.values()
    assert not after.truncated and after.num_steps >= 30
    assert validate_episode(after.path).ok


def _step(i: int, frame: Frame) -> Step:
    return Step(
        tick=i,
        t=time.monotonic(),
        mode=Mode.MANUAL,
        mode_generation=1,
        source="teleop",
        frame=frame,
        depth=None,
        command=np.array([0.1, 0.2]),
        action=np.array([0.1, 0.2]),
        neutral=False,
        safety_reason=None,
        recordable=True,
    )


def test_a_full_handover_drops_and_counts_and_never_blocks(tmp_path):
    raw = sim_config(tmp_path)
    raw["recording"] = {"min_free_mb": 0}
    cfg = parse_config(raw)
    rec = Recorder(cfg, sensor_specs=_sensor_specs(cfg))
    rec.start()
    try:
        rec.start_recording()
        pid = rec.writer_process()["pid"]
        rng = np.random.default_rng(0)
        images = [rng.integers(0, 255, (120, 160, 3), np.uint8) for _ in range(20)]
        n = 600
        frames = [Frame(images[seq % 20], time.monotonic(), seq) for seq in range(n + 1)]
        os.kill(pid, signal.SIGSTOP)  # the writer takes nothing: slots and pipe fill up
        durations: list[float] = []

        def control_thread() -> None:
            for i in range(n):
                t = time.perf_counter()
                rec.hook(_step(i, frames[i]))  # a new frame every tick
                durations.append(time.perf_counter() - t)

        th = threading.Thread(target=control_thread)
        th.start()
        th.join(30)
        stopped_ok = not th.is_alive()
        os.kill(pid, signal.SIGCONT)
        assert stopped_ok, "the hook blocked on a stopped writer"
        dropped = rec.status()["steps_dropped"]
        assert dropped == n - FRAME_SLOTS  # every step after the slots filled had none to go to
        assert rec.writer_process()["slots_busy"] == FRAME_SLOTS
        assert max(durations) < 1.0, max(durations)  # no wait on the writer, only the CPU
        rec.stop_recording()
        rec.hook(_step(n, frames[n]))  # the next tick after the stop ends the episode
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            st = rec.status()
            if st["queue_depth"] == 0 and not st["recording"] and st["steps_written"]:
                break
            time.sleep(0.05)
    finally:
        rec.close()
    st = rec.status()
    assert st["steps_written"] == FRAME_SLOTS and st["steps_dropped"] == n - FRAME_SLOTS, st
    (ep,) = list_episodes(cfg.episodes_dir())
    assert ep.num_steps == FRAME_SLOTS
    got = [s.extra["frame_seq"] for s in ep.steps(decode_images=False)]
    assert got == list(range(FRAME_SLOTS))


def test_the_control_process_runs_no_encoder(tmp_path):
    async def script(d):
        d.brain.start_recording()
        d.brain.set_mode("autonomous")
        assert await until(
            lambda: d.brain.status().to_json()["recording"]["steps_written"] >= 20, 20
        )
        return [t.name for t in threading.enumerate()]

    _, names = run_session(tmp_path, script)
    assert not [n for n in names if "encode" in n], names


@pytest.mark.integration  # the real daemon as a subprocess, SIGKILLed
def test_sigkill_of_the_daemon_takes_the_writer_with_it(tmp_path):
    """The whole daemon SIGKILLed while recording: no orphan writer, the episode is recovered."""
    from edge_agent.control_socket import request
    from rlds.recovery import recover

    proc, sock, ctl = spawn_daemon(tmp_path, sim_config(tmp_path))
    try:
        assert request(ctl, {"cmd": "record", "action": "start"})["ok"]
        assert request(ctl, {"cmd": "mode", "mode": "autonomous"})["ok"]
        deadline = time.monotonic() + 20
        rec = {}
        while time.monotonic() < deadline:
            rec = request(ctl, {"cmd": "status"})["result"]["recording"]
            if rec["steps_written"] >= 60:
                break
            time.sleep(0.1)
        writer = rec["writer_process"]["pid"]
        assert writer and rec["steps_written"] >= 60, rec
        time.sleep(1.2)  # past one fsync interval
        proc.kill()
        proc.wait(5)
        gone = False
        for _ in range(100):
            try:  # gone, or a zombie waiting for whoever adopted it to reap it
                stat = open(f"/proc/{writer}/stat").read()  # noqa: SIM115
                gone = stat.rpartition(")")[2].split()[0] == "Z"
            except FileNotFoundError:
                gone = True
            if gone:
                break
            time.sleep(0.02)
        assert gone, "the writer outlived the daemon"
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()
    episodes = tmp_path / "state" / "episodes"
    assert len(list_interrupted(episodes)) == 1 and list_episodes(episodes) == []
    recover(episodes)
    (ep,) = list_episodes(episodes)
    assert ep.truncated and ep.num_steps >= 30
    assert validate_episode(ep.path).ok

"""Disk full while recording, on a real small filesystem (a tmpfs mounted for the test).

The robot records into a 4 MiB tmpfs next to a filler file, with the real
recorder inside the real daemon on the sim.  When the disk fills: one episode is
committed as truncated and reads back, recording disarms, one error is logged,
status says why, and the car keeps being driven.  When space comes back the fault
clears and recording restarts.  Below the free-space floor no episode directory
is made at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from brain.cli import main
from brain.config import parse_config
from brain.interface import CommandError
from edge_agent.control_socket import request, socket_path
from rlds.errors import EpisodeError
from rlds.layout import DISCARDED_DIR, RESERVE_FILE
from rlds.reader import list_episodes, list_interrupted
from rlds.validate import validate_episode
from rlds.writer import EpisodeWriter
from tests.daemon_helpers import sim_config
from tests.rlds_helpers import make_step
from tests.test_recording_daemon import run_session
from tests.waiting import wait_until, wait_until_async

pytestmark = pytest.mark.slow

MiB = 1 << 20


@pytest.fixture
def small_fs(tmp_path):
    """A 4 MiB tmpfs at ``tmp_path/disk``, unmounted afterwards whatever happens."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if res.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def free(path: Path) -> int:
    return shutil.disk_usage(path).free


def fill(mnt: Path, leave: int) -> Path:
    """Fill the filesystem with one file so that about ``leave`` bytes stay free."""
    filler = mnt / "filler"
    size = free(mnt) - leave
    with open(filler, "ab") as f:
        f.write(bytes(max(0, size)))
    return filler


class ErrorCounter(logging.Handler):
    """Counts ERROR records of the recorder (the daemon's own handlers keep running)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def recorder_errors():
    h = ErrorCounter()
    log = logging.getLogger("brain.recorder")
    log.addHandler(h)
    try:
        yield h.records
    finally:
        log.removeHandler(h)


def test_disk_full_commits_truncated_disarms_once_and_the_car_keeps_driving(tmp_path, small_fs):
    episodes = small_fs / "episodes"

    async def script(d):
        rec = d.recorder
        fill(small_fs, 400 * 1024)
        d.brain.start_recording(["diskfull"])
        d.brain.set_mode("autonomous")  # the expert drives; the sim-donkey records it
        await wait_until_async(
            lambda: d.brain.status().to_json()["recording"]["fault"] is not None,
            timeout=30,
            every=0.05,
        )
        ticks_at_fault = d.control.timing.ticks
        t_fault = time.monotonic()
        await asyncio.sleep(2.0)  # what an armed recorder did here: a new episode every tick
        status = d.brain.status().to_json()
        stats = d.brain.stats().to_json()
        ticks = d.control.timing.ticks - ticks_at_fault
        elapsed = time.monotonic() - t_fault
        dirs_while_full = sorted(p.name for p in episodes.iterdir())

        filler = small_fs / "filler"
        filler.unlink()  # space is back
        await wait_until_async(
            lambda: d.brain.status().to_json()["recording"]["fault"] is None, timeout=5, every=0.05
        )
        after_space = d.brain.status().to_json()["recording"]
        d.brain.start_recording()
        await wait_until_async(lambda: rec.stats.last_error is None, timeout=10, every=0.05)
        await asyncio.sleep(1.0)
        d.brain.set_mode("idle")  # ends (commits) the second episode
        await asyncio.sleep(0.5)
        return (
            status,
            stats,
            ticks,
            elapsed,
            dirs_while_full,
            after_space,
            d.brain.status().to_json(),
        )

    with recorder_errors() as errors:
        _, out = run_session(
            tmp_path,
            script,
            **{"recording.root": str(episodes), "recording.min_free_mb": 0},
        )
    status, stats, ticks, elapsed, dirs_while_full, after_space, final = out
    rec = status["recording"]

    # recording stopped by itself, said why, once
    assert rec["armed"] is False and rec["recording"] is False
    assert rec["fault"]["kind"] == "disk_full"
    assert "ENOSPC" in rec["fault"]["message"] and "truncated" in rec["fault"]["message"]
    assert rec["last_error"] == rec["fault"]["message"]
    assert rec["episodes_truncated"] == 1 and rec["episodes_failed"] == 0
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert errors[0].exc_info is None  # a disk error is a sentence, not a traceback
    # no episode directory was opened on the full disk: only the truncated one
    assert dirs_while_full == [rec["fault"]["episode_id"]]

    # the car kept being driven through it: the loop ticked at its rate, nothing neutral
    assert status["mode"] == "autonomous"
    assert ticks >= 0.6 * 20 * elapsed, (ticks, elapsed)
    assert stats["control"]["faults"]["recorder"] == 0
    assert stats["sim"]["speed_mps"] > 0.1 and stats["control"]["last_neutral"] is False

    # space back: the fault clears; recording stays off until started again
    assert after_space["fault"] is None and after_space["armed"] is False
    assert after_space["last_error"] is not None
    # restarted: it records again and the error is gone
    assert final["recording"]["last_error"] is None and final["recording"]["fault"] is None

    eps = list_episodes(episodes)
    assert list_interrupted(episodes) == [] and len(eps) == 2
    trunc, resumed = eps
    assert trunc.episode_id == rec["fault"]["episode_id"]
    assert trunc.truncated and trunc.status == "recovered"
    assert "write error" in trunc.metadata["recovery"]["reason"]
    steps = list(trunc.steps())
    assert len(steps) == trunc.num_steps >= 10
    assert steps[-1].is_last and not steps[-1].is_terminal
    assert steps[0].observation["image"].shape == (120, 160, 3)
    assert validate_episode(trunc.path).ok, validate_episode(trunc.path).render()
    assert not (trunc.path / RESERVE_FILE).exists()
    assert not resumed.truncated and resumed.num_steps >= 10
    assert not (episodes / DISCARDED_DIR).exists()


def test_no_episode_directory_below_the_floor(tmp_path, small_fs):
    episodes = small_fs / "episodes"
    episodes.mkdir()

    async def script(d):
        fill(small_fs, MiB // 2)
        with pytest.raises(CommandError, match="below the floor"):
            d.brain.start_recording()
        return d.brain.status().to_json()["recording"]

    with recorder_errors() as errors:
        _, rec = run_session(
            tmp_path, script, **{"recording.root": str(episodes), "recording.min_free_mb": 1}
        )
    assert rec["armed"] is False and rec["fault"] is None and errors == []
    assert list(episodes.iterdir()) == []


def test_auto_record_below_the_floor_makes_no_directory_and_says_so_once(tmp_path, small_fs):
    episodes = small_fs / "episodes"
    episodes.mkdir()
    fill(small_fs, MiB // 2)

    async def script(d):
        d.brain.set_mode("autonomous")
        await wait_until_async(
            lambda: d.brain.status().to_json()["recording"]["fault"] is not None,
            timeout=10,
            every=0.05,
        )
        await asyncio.sleep(1.0)
        return d.brain.status().to_json()["recording"]

    with recorder_errors() as errors:
        _, rec = run_session(
            tmp_path,
            script,
            **{
                "recording.root": str(episodes),
                "recording.min_free_mb": 1,
                "recording.auto_record": True,
            },
        )
    assert rec["fault"]["kind"] == "low_space" and "below the floor" in rec["fault"]["message"]
    assert rec["armed"] is False and len(errors) == 1
    assert list(episodes.iterdir()) == []


def test_falling_below_the_floor_mid_episode_ends_it_cleanly(tmp_path, small_fs):
    episodes = small_fs / "episodes"

    async def script(d):
        fill(small_fs, int(1.6 * MiB))
        d.brain.start_recording()
        d.brain.set_mode("autonomous")
        await wait_until_async(
            lambda: d.brain.status().to_json()["recording"]["fault"] is not None,
            timeout=30,
            every=0.05,
        )
        return d.brain.status().to_json()["recording"], free(small_fs)

    with recorder_errors() as errors:
        _, (rec, left) = run_session(
            tmp_path, script, **{"recording.root": str(episodes), "recording.min_free_mb": 1}
        )
    assert rec["fault"]["kind"] == "low_space" and rec["armed"] is False
    assert len(errors) == 1
    assert left > 0.5 * MiB  # stopped near the floor, long before the disk was full
    (ep,) = list_episodes(episodes)
    assert not ep.truncated and ep.status == "complete" and ep.num_steps >= 10
    assert validate_episode(ep.path).ok


def test_episode_files_are_0644_and_directories_0755(tmp_path):
    old = os.umask(0o022)
    try:
        w = EpisodeWriter(tmp_path / "eps", {"seed": 1, "depth_scale": 0.001})
        for i in range(3):
            w.append(make_step(1, i))
        during = {p.name: stat.S_IMODE(p.stat().st_mode) for p in w.path.iterdir()}
        info = w.close()
    finally:
        os.umask(old)
    assert during == {"steps.tfrecord": 0o644, "open.json": 0o644, RESERVE_FILE: 0o644}
    after = {p.name: stat.S_IMODE(p.stat().st_mode) for p in info.path.iterdir()}
    assert after == {"steps.tfrecord": 0o644, "episode.json": 0o644}
    assert stat.S_IMODE(info.path.stat().st_mode) == 0o755


@pytest.mark.parametrize("reserve", [None, 0])
def test_commit_succeeds_when_another_process_took_the_last_byte(small_fs, reserve):
    """The disk fills between two records (another writer took it all): nothing of the
    failed record reached the disk, so only the space set aside lets the episode commit."""
    kw = {} if reserve is None else {"reserve_bytes": reserve}
    w = EpisodeWriter(small_fs / "eps", {"seed": 3, "depth_scale": 0.001}, **kw)
    for i in range(12):
        w.append(make_step(3, i))
    fill(small_fs, 0)
    assert free(small_fs) == 0
    with pytest.raises(EpisodeError, match="No space left"):
        for i in range(12, 40):
            w.append(make_step(3, i))
    if reserve == 0:  # without the reserve the commit has nowhere to go
        with pytest.raises(EpisodeError, match="commit failed"):
            w.close()
        assert list_interrupted(small_fs / "eps") == [w.path]
        return
    info = w.close()
    assert info.num_steps == 11 and info.metadata["truncated"]
    (ep,) = list_episodes(small_fs / "eps")
    steps = list(ep.steps())
    assert [s.index for s in steps] == list(range(11)) and steps[-1].is_last
    assert validate_episode(ep.path).ok


@pytest.mark.integration
def test_real_daemon_process_disk_full_once_then_resumes(tmp_path, small_fs):
    """`continuon run` as systemd starts it: one log line, status says why, driving goes on."""
    episodes = small_fs / "episodes"
    raw = sim_config(
        tmp_path,
        **{
            "recording.root": str(episodes),
            "recording.min_free_mb": 0,
            "logging.level": "INFO",
            "api.enabled": False,
            "discovery.enabled": False,
        },
    )
    cfg_path = tmp_path / "robot.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    ctl = socket_path(parse_config(raw))
    log_path = tmp_path / "daemon.log"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))

    def ask(cmd: str) -> dict:
        resp = request(ctl, {"cmd": cmd})
        assert resp["ok"], resp
        return resp["result"]

    fill(small_fs, 400 * 1024)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "brain.cli", "run", "--config", str(cfg_path)],
            env=env,
            stderr=log,
        )
    try:
        wait_until(ctl.exists, timeout=20, every=0.1)
        assert main(["record", "start", "--config", str(cfg_path)]) == 0
        assert main(["mode", "autonomous", "--config", str(cfg_path)]) == 0
        wait_until(lambda: ask("status")["recording"]["fault"] is not None, timeout=30, every=0.1)
        before = ask("stats")
        time.sleep(3.0)  # an armed recorder opened ~20 episodes a second here
        after = ask("stats")
        status = ask("status")

        (small_fs / "filler").unlink()
        wait_until(lambda: ask("status")["recording"]["fault"] is None, timeout=5, every=0.1)
        assert main(["record", "start", "--config", str(cfg_path)]) == 0
        wait_until(lambda: ask("status")["recording"]["last_error"] is None, timeout=10, every=0.1)
        time.sleep(1.0)
        assert main(["mode", "idle", "--config", str(cfg_path)]) == 0
        time.sleep(0.5)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0

    rec = status["recording"]
    assert status["mode"] == "autonomous" and rec["armed"] is False
    assert rec["fault"]["kind"] == "disk_full" and rec["episodes_truncated"] == 1
    ticks = after["control"]["ticks"] - before["control"]["ticks"]
    assert ticks >= 0.6 * 20 * 3.0, ticks
    assert after["sim"]["speed_mps"] > 0.1 and after["control"]["last_neutral"] is False
    assert after["control"]["faults"]["recorder"] == 0

    text = log_path.read_text()
    stopped = [line for line in text.splitlines() if "recording stopped" in line]
    assert len(stopped) == 1 and "ENOSPC" in stopped[0], stopped
    assert "Traceback" not in text
    eps = list_episodes(episodes)
    assert [e.truncated for e in eps] == [True, False]
    assert list_interrupted(episodes) == [] and not (episodes / DISCARDED_DIR).exists()
    assert eps[0].episode_id == rec["fault"]["episode_id"]
    assert validate_episode(eps[0].path).ok


def test_read_only_filesystem_stops_recording_until_restarted(tmp_path, small_fs):
    """EROFS (an SD card remounted read-only after errors): no directory, one error, and the
    fault stays (free space says nothing about it) until recording is started again."""
    episodes = small_fs / "episodes"

    def remount(opt: str) -> None:
        res = subprocess.run(["mount", "-o", f"remount,{opt}", str(small_fs)], capture_output=True)
        assert res.returncode == 0, res.stderr

    async def script(d):
        d.brain.start_recording()
        d.brain.set_mode("autonomous")
        await asyncio.sleep(1.0)
        d.brain.set_mode("idle")  # commits the first episode; no file is open any more
        await wait_until_async(
            lambda: d.brain.status().to_json()["recording"]["episodes_committed"] == 1,
            timeout=5,
            every=0.05,
        )
        remount("ro")
        try:
            d.brain.set_mode("autonomous")
            await wait_until_async(
                lambda: d.brain.status().to_json()["recording"]["fault"] is not None,
                timeout=10,
                every=0.05,
            )
            await asyncio.sleep(2.5)  # plenty of free space: the fault must not clear by itself
            during = d.brain.status().to_json()["recording"]
        finally:
            remount("rw")
        d.brain.start_recording()
        await wait_until_async(lambda: d.recorder.stats.last_error is None, timeout=10, every=0.05)
        d.brain.set_mode("idle")
        await asyncio.sleep(0.5)
        return during, d.brain.status().to_json()["recording"]

    with recorder_errors() as errors:
        _, (during, final) = run_session(
            tmp_path, script, **{"recording.root": str(episodes), "recording.min_free_mb": 0}
        )
    assert during["fault"]["kind"] == "disk_error" and during["armed"] is False
    assert "EROFS" in during["fault"]["message"] and during["fault"]["episode_id"] is None
    assert len(errors) == 1 and errors[0].exc_info is None
    assert final["fault"] is None and final["last_error"] is None
    eps = list_episodes(episodes)
    assert len(eps) == 2 and not any(e.truncated for e in eps)
    assert sorted(p.name for p in episodes.iterdir()) == [e.episode_id for e in eps]


def test_which_errors_clear_when_space_is_back():
    """Only ENOSPC and our floor are about free space; a quota (invisible to statvfs), an I/O
    error or a read-only remount stay reported until recording is started again.
    (tmpfs quotas are not built into this kernel, so EDQUOT is checked here, not on a disk.)"""
    import errno

    from brain.recording_fault import describe, kind_of, new_fault

    wrapped = EpisodeError("write failed")
    wrapped.__cause__ = OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
    cases = {
        errno.ENOSPC: ("disk_full", True),
        errno.EDQUOT: ("quota_exceeded", False),
        errno.EIO: ("disk_error", False),
        errno.EROFS: ("disk_error", False),
        errno.EFBIG: ("disk_error", False),
    }
    for code, (kind, clears) in cases.items():
        exc = OSError(code, os.strerror(code))
        assert kind_of(exc) == kind
        assert new_fault(kind_of(exc), "m", None).clears_with_space is clears
        assert errno.errorcode[code] in describe(exc)
    assert kind_of(wrapped) == "quota_exceeded" and "EDQUOT" in describe(wrapped)
    assert kind_of(ValueError("bug")) == "error"


def test_an_episode_that_cannot_start_leaves_no_directory(tmp_path, small_fs):
    """Floor 0 and 16 KiB free: the directory and step file fit, the commit reserve does not;
    the writer removes what it made, recording stops once, and the disk stays as it was."""
    episodes = small_fs / "episodes"
    episodes.mkdir()

    async def script(d):
        fill(small_fs, 16 * 1024)
        left = free(small_fs)
        d.brain.start_recording()
        d.brain.set_mode("autonomous")
        await wait_until_async(
            lambda: d.brain.status().to_json()["recording"]["fault"] is not None,
            timeout=10,
            every=0.05,
        )
        await asyncio.sleep(1.0)
        return d.brain.status().to_json()["recording"], left, free(small_fs)

    with recorder_errors() as errors:
        _, (rec, before, after) = run_session(
            tmp_path, script, **{"recording.root": str(episodes), "recording.min_free_mb": 0}
        )
    assert rec["fault"]["kind"] == "disk_full" and rec["fault"]["episode_id"] is None
    assert "could not start an episode" in rec["fault"]["message"]
    assert rec["armed"] is False and len(errors) == 1
    assert list(episodes.iterdir()) == [] and after == before

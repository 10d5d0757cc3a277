"""OTA building blocks: the state file, the updater lock, the health monitor."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from brain.config import OtaConfig
from brain.ota.health import HealthCounters, HealthMonitor, HealthThresholds, violations
from brain.ota.lock import UpdaterBusy, UpdaterLock
from brain.ota.slots import Slots
from brain.ota.state import (
    FailedVersion,
    OtaState,
    SlotRecord,
    StateError,
    StateStore,
)
from brain.policy import PolicyRunner, load_model
from brain.policy.testing import FaultyModel, build_dummy_policy
from common.durable import replace_file
from tests.emulation import wall

SHA = "ab" * 32


def _rec(slot="A", version="1.0", counter=1):
    return SlotRecord(slot=slot, version=version, release_counter=counter, manifest_sha256=SHA)


# ----------------------------------------------------------------------------- state file


def test_state_round_trip_and_atomic_replace(tmp_path):
    store = StateStore(tmp_path)
    fresh = store.load()  # a fresh robot
    assert fresh.phase == "idle" and fresh.committed is None and fresh.release_counter == 0
    st = OtaState(committed=_rec(), release_counter=1).with_(phase="committed")
    store.save(st)
    assert store.load() == st
    # no temporary files left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]
    st2 = st.with_(failed=[FailedVersion(version="2.0", release_counter=2, reason="nan")])
    store.save(st2)
    assert store.load().failed_reason("2.0") == "nan"
    assert store.load().failed_reason("3.0") is None


def test_inactive_slot_is_never_the_committed_one():
    assert OtaState().inactive_slot() == "A"
    assert OtaState(committed=_rec("A")).inactive_slot() == "B"
    assert OtaState(committed=_rec("B")).inactive_slot() == "A"


@pytest.mark.parametrize(
    "content, needle",
    [
        (b"{not json", "not valid JSON"),
        (b'{"phase": "flying"}', "phase"),
        (b'{"release_counter": -1}', "release_counter"),
        (b'{"phase": "idle", "surprise": 1}', "surprise"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
def test_corrupt_state_file_is_a_clear_error(tmp_path, content, needle):
    (tmp_path / "state.json").write_bytes(content)
    with pytest.raises(StateError) as ei:
        StateStore(tmp_path).load()
    assert "state.json" in str(ei.value) and needle in str(ei.value)


def test_atomic_write_leaves_old_content_when_the_write_fails(tmp_path, monkeypatch):
    p = tmp_path / "state.json"
    replace_file(p, b"old")

    def boom(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        replace_file(p, b"new")
    monkeypatch.undo()
    assert p.read_bytes() == b"old"
    assert [x.name for x in tmp_path.iterdir()] == ["state.json"]


def test_place_swaps_a_slot_whole_and_cleanup_repairs_a_cut_two_rename_swap(tmp_path):
    slots = Slots(tmp_path)
    slots.ensure()
    old = slots.path("A")
    old.mkdir()
    (old / "model.onnx").write_bytes(b"old model")
    staging = slots.new_staging()
    staging.mkdir()
    (staging / "model.onnx").write_bytes(b"new model")
    slots.place(staging, "A")
    assert (slots.path("A") / "model.onnx").read_bytes() == b"new model"
    assert sorted(p.name for p in slots.dir.iterdir()) == ["A"]  # the old tree is gone
    # Where the filesystem cannot exchange, a crash between the two renames leaves the old
    # tree aside and no slot: boot cleanup puts it back.
    slots.path("A").rename(slots.dir / ".A.old-0badc0de")
    assert slots.cleanup() == []
    assert (slots.path("A") / "model.onnx").read_bytes() == b"new model"


def test_committed_record_fallback_file(tmp_path):
    store = StateStore(tmp_path)
    assert store.load_committed() is None
    store.save_committed(_rec("B", "7", 7))
    rec = store.load_committed()
    assert (rec.slot, rec.version, rec.release_counter) == ("B", "7", 7)
    (tmp_path / "committed.json").write_text("garbage")
    assert store.load_committed() is None


# ----------------------------------------------------------------------------- lock

_HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from brain.ota.lock import UpdaterLock
    UpdaterLock(Path(sys.argv[1])).acquire()
    print("held", flush=True)
    time.sleep(60)
    """
)


def test_lock_excludes_a_second_updater_and_dies_with_its_holder(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(UpdaterBusy) as ei:
            UpdaterLock(tmp_path).acquire()
        assert f"pid {proc.pid}" in str(ei.value)
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
        # the kernel dropped the lock with the process: no stale lock after a crash
        lock = UpdaterLock(tmp_path).acquire()
        assert lock.held
        lock.release()
    finally:
        proc.kill()
        proc.wait()


def test_lock_in_one_process(tmp_path):
    a = UpdaterLock(tmp_path)
    with a, pytest.raises(UpdaterBusy):
        UpdaterLock(tmp_path).acquire()  # a second open file description: refused
    with UpdaterLock(tmp_path) as b:
        assert b.held


# ----------------------------------------------------------------------------- health


class _Safety:
    max_nan_outputs = 3
    max_inference_errors = 10
    health_window_s = 99.0
    max_latency_ms = 12.5
    max_safety_interventions = None


def test_thresholds_take_the_stricter_value_and_longer_window():
    cfg = OtaConfig(health_window_s=5, max_nan_outputs=1, max_inference_errors=2)
    t = HealthThresholds.combine(cfg, _Safety())
    assert t.window_s == 99.0
    assert t.max_nan_outputs == 1  # config stricter
    assert t.max_inference_errors == 2  # config stricter than the bundle's 10
    assert t.max_safety_interventions == cfg.max_safety_interventions
    assert t.max_latency_ms == 12.5
    t2 = HealthThresholds.combine(OtaConfig(max_nan_outputs=50), _Safety())
    assert t2.max_nan_outputs == 3  # the bundle is stricter


def test_violations_name_what_was_exceeded():
    t = HealthThresholds(1.0, 0, 0, 5, 20)
    assert violations(HealthCounters(100, 0, 0, 5, 20), t) == []
    bad = violations(HealthCounters(100, 1, 2, 6, 21), t)
    assert len(bad) == 4 and "2 NaN/Inf outputs" in bad[1]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    p = build_dummy_policy(tmp_path_factory.mktemp("m") / "m.onnx", height=24, width=32, conv=False)
    return load_model(p)


def _drive(runner, stop, n_ticks=None):
    img = np.zeros((24, 32, 3), np.uint8)
    i = 0
    while not stop.is_set() and (n_ticks is None or i < n_ticks):
        runner.infer(img, time.monotonic())
        i += 1
        time.sleep(0.005)


async def _watch_with_driver(runner, thresholds, **kw):
    import threading

    mon = HealthMonitor(runner.stats, poll_s=0.01)
    base = mon.counters()
    stop = threading.Event()
    t = threading.Thread(target=_drive, args=(runner, stop), daemon=True)
    t.start()
    try:
        return await mon.watch(thresholds, base, **kw)
    finally:
        stop.set()
        t.join()


def test_monitor_passes_a_healthy_model(tiny_model):
    with PolicyRunner(tiny_model, deadline_s=0.5) as runner:
        t = HealthThresholds(0.3, 0, 0, 5, 20, min_inferences=5)
        rep = asyncio.run(_watch_with_driver(runner, t))
    assert rep.healthy, rep.reasons
    assert rep.seen.inferences >= 5 and rep.elapsed_s >= 0.3


@pytest.mark.timing
def test_monitor_fails_early_on_nan(tiny_model):
    faulty = FaultyModel.wrap(tiny_model, nan_on=range(3, 10_000))
    with PolicyRunner(faulty, deadline_s=0.5) as runner:
        t = HealthThresholds(30.0, 0, 0, 5, 20)
        t0 = time.monotonic()
        rep = asyncio.run(_watch_with_driver(runner, t))
    assert not rep.healthy and "NaN" in rep.reasons[0]
    assert time.monotonic() - t0 < wall(2.0)  # early, not after the 30 s window


def test_monitor_counts_errors_and_latency(tiny_model):
    faulty = FaultyModel.wrap(tiny_model, raise_on={2, 4})
    with PolicyRunner(faulty, deadline_s=0.5) as runner:
        rep = asyncio.run(_watch_with_driver(runner, HealthThresholds(5.0, 1, 0, 5, 20)))
    assert not rep.healthy and "2 inference errors" in rep.reasons[0]
    slow = FaultyModel.wrap(tiny_model, delay_s=0.05)
    with PolicyRunner(slow, deadline_s=0.01) as runner:
        rep = asyncio.run(_watch_with_driver(runner, HealthThresholds(5.0, 0, 0, 2, 20)))
    assert not rep.healthy and "latency budget" in rep.reasons[0]


def test_monitor_requires_min_inferences_and_honours_abort(tiny_model):
    with PolicyRunner(tiny_model, deadline_s=0.5) as runner:
        mon = HealthMonitor(runner.stats, poll_s=0.01)
        t = HealthThresholds(0.1, 0, 0, 5, 20, min_inferences=10)
        rep = asyncio.run(mon.watch(t, mon.counters()))  # nobody drives: idle robot
        assert not rep.healthy and "only 0 inferences" in rep.reasons[0]

        async def aborted():
            ev = asyncio.Event()
            asyncio.get_running_loop().call_later(0.05, ev.set)
            return await mon.watch(HealthThresholds(30, 0, 0, 5, 20), mon.counters(), abort=ev)

        rep = asyncio.run(aborted())
        assert rep.aborted and not rep.healthy


def test_monitor_reads_safety_interventions():
    n = {"v": 0}
    mon = HealthMonitor(lambda: {"count": 0}, lambda: n["v"], poll_s=0.01)
    base = mon.counters()
    n["v"] = 21
    rep = asyncio.run(mon.watch(HealthThresholds(5, 0, 0, 0, 20), base))
    assert not rep.healthy and "21 safety interventions" in rep.reasons[0]


def test_state_json_is_human_readable(tmp_path):
    StateStore(tmp_path).save(OtaState(committed=_rec()))
    data = json.loads((tmp_path / "state.json").read_text())
    assert data["committed"]["slot"] == "A" and data["schema_version"] == 1
    assert Path(tmp_path / "state.json").read_text().endswith("\n")


def test_interventions_count_only_while_the_policy_drives():
    from collections import Counter
    from types import SimpleNamespace

    from brain.config import parse_config
    from brain.modes import ModeManager
    from brain.ota.wiring import PolicyInterventions

    safety = SimpleNamespace(counts=Counter())
    modes = ModeManager()
    cfg = parse_config({"control": {"autopilot": "policy"}})
    n = PolicyInterventions(safety, modes, cfg)
    modes.set_mode("manual", "test")
    safety.counts["clamped"] += 5  # a joystick past the throttle limit
    assert n() == 0
    modes.set_mode("autonomous", "test")
    safety.counts["clamped"] += 2
    safety.counts["non_finite"] += 1
    safety.counts["watchdog"] += 9  # not the policy's doing
    assert n() == 3
    expert = PolicyInterventions(safety, modes, parse_config({"control": {"autopilot": "expert"}}))
    safety.counts["clamped"] += 4
    assert expert() == 0 and n() == 7

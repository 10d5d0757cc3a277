"""Frame-triggered ticks: the schedule, the loop on a scripted camera, the daemon on the sim."""

from __future__ import annotations

import asyncio
import queue
import threading
import time

import numpy as np
import pytest
import yaml

from brain.capture import CaptureWorker, SensorHub
from brain.config import parse_config
from brain.control.loop import ControlLoop
from brain.control.safety import SafetyLayer
from brain.control.trigger import TickSchedule
from brain.hardware.picamera2_camera import Picamera2Camera
from brain.hardware.protocols import CAR_ACTION_SPEC, Frame
from brain.hardware.realsense_camera import pick_rate
from brain.modes import ModeManager
from brain.threads import run_thread
from tests.daemon_helpers import ROOT, make_daemon, sim_config, start_daemon, stop_daemon
from tests.emulation import wall
from tests.fakes.fake_hw_libs import FakePicamera2Lib

# ----------------------------------------------------------------------------- the schedule


def test_frame_schedule_ticks_on_each_frame_and_falls_back_to_the_period():
    s = TickSchedule("frame", 0.02, start=10.0)
    assert s.due(None) == pytest.approx(10.01)  # no frame yet: the fallback
    assert s.due((10.004, 10.0)) == pytest.approx(10.004)  # a frame: as it arrives
    s.ticked(10.004, 10.0)
    # The next frames of a camera at the control rate, rendered slower or faster: at once.
    assert s.due((10.031, 10.02)) == pytest.approx(10.031)
    assert s.due((10.022, 10.02)) == pytest.approx(10.022)
    s.ticked(10.022, 10.02)
    # The camera stalls: a tick half a period after the next frame was due, then every period.
    t = s.due(None)
    assert t == pytest.approx(10.022 + 0.02 + 0.01)
    starts = []
    for _ in range(5):
        starts.append(t)
        s.ticked(t, None)
        t = s.due(None)
    assert np.allclose(np.diff(starts), 0.02)
    # Frames again: the first is taken at once, and so is the next one.
    late = starts[-1] + 0.001
    assert s.due((late, late - 0.004)) == pytest.approx(late)
    s.ticked(late, late - 0.004)
    assert s.due((late + 0.02, late + 0.016)) == pytest.approx(late + 0.02)


def test_frame_schedule_does_not_ratchet_on_render_time():
    """Render times of 3-20 ms around a 20 ms period: every frame is still ticked on arrival."""
    rng = np.random.default_rng(0)
    s = TickSchedule("frame", 0.02, start=0.0)
    waits = []
    for k in range(1, 500):
        t_capture = k * 0.02
        arrival = t_capture + rng.uniform(0.003, 0.02)
        due = s.due((arrival, t_capture))
        waits.append(due - arrival)
        s.ticked(due, t_capture)
    assert max(waits) == 0.0


def test_frame_schedule_keeps_the_control_rate_with_a_faster_camera():
    """A 60 fps camera (RealSense has no 50 fps mode) under a 50 Hz loop, 3 ms readout."""
    s = TickSchedule("frame", 0.02, start=0.0)
    captures = [k / 60 for k in range(60 * 10 + 1)]  # 10 s
    arrivals = [c + 0.003 for c in captures]
    i, now, used = -1, 0.0, []
    while now < 10.0:
        while i + 1 < len(arrivals) and arrivals[i + 1] <= now:
            i += 1  # the newest frame wins
        pending = (arrivals[i], captures[i]) if i >= 0 and (not used or used[-1] != i) else None
        due = s.due(pending)
        if due > now:
            now = min(due, arrivals[i + 1])
            continue
        s.ticked(now, None if pending is None else captures[i])
        if pending is not None:
            used.append(i)
        # A frame is held at most until the next one replaces it: a tick takes the newest.
        assert not used or now - arrivals[used[-1]] <= 1 / 60 + 1e-9
    assert 495 <= len(used) <= 505  # 50 Hz on average, not 60
    assert len(set(used)) == len(used)  # no frame ticked twice


def test_timer_schedule_drops_the_deadlines_it_ran_past():
    s = TickSchedule("timer", 0.05, start=1.0)
    assert s.due((0.9, 0.89)) == 1.0  # frames do not move a timer tick
    s.ticked(1.0, 0.99)
    assert s.finished(1.01, 1.0) == (False, 0)
    s.ticked(1.05, None)
    assert s.finished(1.23, 1.05) == (True, 3)  # ran past 1.10, 1.15, 1.20
    assert s.due(None) == pytest.approx(1.25)


# ----------------------------------------------------------------------------- the loop thread


class ScriptedCamera:
    """The driver boundary: ``read`` blocks until the test releases a frame (or it dies)."""

    width, height, fps = 32, 24, 20.0

    def __init__(self) -> None:
        self._q: queue.Queue[object] = queue.Queue()
        self._seq = 0

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass

    def shoot(self, n: int = 1) -> None:
        for _ in range(n):
            self._q.put(time.monotonic())

    def die(self) -> None:
        self._q.put(RuntimeError("camera unplugged"))

    def read(self, timeout: float = 1.0) -> Frame:
        try:
            item = self._q.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError("no frame") from None
        if isinstance(item, BaseException):
            raise item
        self._seq += 1
        img = np.zeros((self.height, self.width, 3), np.uint8)
        return Frame(img, t_capture=float(item), seq=self._seq)  # type: ignore[arg-type]


class LoggingActuators:
    action_spec = CAR_ACTION_SPEC

    def __init__(self) -> None:
        self.calls: list[tuple[float, str]] = []
        self.gate: threading.Event | None = None  # set: writes block until it opens
        self.entered = threading.Event()

    def write(self, action) -> None:
        self.calls.append((time.monotonic(), "write"))
        gate = self.gate
        if gate is not None:
            self.entered.set()
            gate.wait(2.0)

    def neutral(self) -> None:
        self.calls.append((time.monotonic(), "neutral"))


class Rig:
    """A ControlLoop and a capture thread on a scripted camera, both on real threads."""

    def __init__(self, tmp_path, **overrides) -> None:
        cfg = parse_config(sim_config(tmp_path, **{"safety.slew_per_s": {}, **overrides}))
        self.modes = ModeManager()
        self.hub = SensorHub()
        self.cam = ScriptedCamera()
        self.worker = CaptureWorker.for_camera(self.cam, self.hub)  # type: ignore[arg-type]
        self.act = LoggingActuators()
        self.loop = ControlLoop(
            cfg, self.modes, self.hub, self.act, SafetyLayer(CAR_ACTION_SPEC, cfg.safety)
        )
        self.steps: list[tuple[float, int | None, bool]] = []
        self.loop.recorder = lambda st: self.steps.append(
            (st.t, None if st.frame is None else st.frame.seq, st.neutral)
        )
        self._bg = threading.Thread(target=self._run_bg, daemon=True)
        self._aio: asyncio.AbstractEventLoop | None = None
        self.capture_error: BaseException | None = None

    def _run_bg(self) -> None:
        async def main() -> None:
            self._aio = asyncio.get_running_loop()
            cap = asyncio.create_task(self.worker.run())
            ctl = asyncio.create_task(
                run_thread("control", self.loop.run_blocking, self.loop.stop, join_timeout_s=1.0)
            )
            try:
                await cap
            except Exception as exc:  # a dead camera ends its task; the loop must go on
                self.capture_error = exc
            await ctl

        asyncio.run(main())

    def __enter__(self) -> Rig:
        self._bg.start()
        deadline = time.monotonic() + 5
        while self.loop.timing.ticks == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        return self

    def __exit__(self, *exc) -> None:
        self.loop.stop()
        self.worker._stop.set()
        self.cam.die()
        self._bg.join(5)


def _feed(rig: Rig, seconds: float, period: float, teleop=(0.0, 0.4), frames: bool = True):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if teleop is not None:
            rig.loop.teleop.set(teleop)
        if frames:
            rig.cam.shoot()
        time.sleep(period)


def test_stalled_camera_falls_back_to_the_period_and_goes_neutral_when_stale(tmp_path):
    with Rig(tmp_path, **{"control.rate_hz": 20, "control.max_frame_age_ms": 200}) as rig:
        rig.modes.set_mode("manual")
        _feed(rig, 0.6, 0.05)  # frames and joystick at 20 Hz
        t_stall = time.monotonic()
        last_frame_t = rig.hub.latest()[0].t_capture
        _feed(rig, 0.8, 0.05, frames=False)  # the joystick goes on, the camera stops
        stats = rig.loop.stats()
        calls = list(rig.act.calls)
        steps = list(rig.steps)
    assert stats["trigger"] == "frame" and stats["frame_ticks"] >= 8
    assert any(k == "write" for t, k in calls if t < t_stall)
    stall = [t for t, _, _ in steps if t > t_stall + 0.1]
    # Ticks go on at the control period without frames (not one per frame, not none).
    assert len(stall) >= 10 and np.median(np.diff(stall)) == pytest.approx(0.05, abs=0.01)
    assert stats["ticks_without_frame"] >= 10
    stale_t = last_frame_t + 0.2 + 0.05 + 0.03  # max age + one period + scheduling slack
    after = [k for t, k in calls if t > stale_t]
    assert after and all(k == "neutral" for k in after)
    assert rig.loop.safety.stats()["stale_frame"] >= 5
    assert rig.loop.faults["stale_frame"] >= 5


@pytest.mark.timing
def test_dead_camera_still_lets_the_teleop_watchdog_stop_the_car(tmp_path):
    overrides = {
        "control.rate_hz": 20,
        "control.max_frame_age_ms": 2000,  # frames stay usable: the watchdog must act
        "safety.teleop_timeout_ms": 250,
    }
    with Rig(tmp_path, **overrides) as rig:
        rig.modes.set_mode("manual")
        _feed(rig, 0.4, 0.05)
        rig.cam.die()  # the capture task ends with the driver's error
        for _ in range(10):
            rig.cam.die()
        _feed(rig, 0.3, 0.05, frames=False)  # the joystick still talks
        t_last = time.monotonic()
        time.sleep(0.6)  # then the phone goes silent too
        calls = list(rig.act.calls)
        error = rig.capture_error
        stats = rig.loop.stats()
    assert isinstance(error, RuntimeError)
    assert any(k == "write" for t, k in calls if t_last - 0.2 < t < t_last)  # still driving
    first_neutral = next(t for t, k in calls if t > t_last and k == "neutral")
    assert first_neutral - t_last <= wall(0.25 + 0.05 + 0.05)  # timeout + a period + slack
    assert all(k == "neutral" for t, k in calls if t >= first_neutral)
    assert rig.loop.safety.stats()["watchdog"] >= 1 and stats["ticks_without_frame"] >= 10


def _until(cond, timeout: float = 2.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.002)


def test_a_burst_of_frames_makes_one_tick_on_the_newest(tmp_path):
    """Frames 2-6 land while the tick on frame 1 is stuck in a write: one tick takes frame 6."""
    # Only ticks write here (an immediate teleop write could be the one that blocks).
    with Rig(tmp_path, **{"control.rate_hz": 10, "control.teleop_immediate": False}) as rig:
        rig.modes.set_mode("manual")
        time.sleep(0.12)  # a fallback tick or two with no frame at all
        n0 = len(rig.steps)
        gate = rig.act.gate = threading.Event()
        rig.loop.teleop.set([0.0, 0.3])  # so that the next tick writes
        rig.cam.shoot()  # frame 1: a tick starts and blocks in the write
        _until(rig.act.entered.is_set)
        rig.cam.shoot(5)  # frames 2..6 while it runs
        _until(lambda: rig.hub.camera_arrival().count == 6)
        time.sleep(0.06)  # stuck for more than half a period: the next frame tick is due
        rig.act.gate = None
        t_release = time.monotonic()
        gate.set()
        _until(lambda: any(s == 6 for _, s, _ in rig.steps))
        time.sleep(0.02)
        stats = rig.loop.stats()
        steps = rig.steps[n0:]
    seqs = [s for _, s, _ in steps]
    new = [s for i, s in enumerate(seqs) if s is not None and (i == 0 or seqs[i - 1] != s)]
    assert new == [1, 6], (seqs, stats)  # frames 2-5 got no tick, 6 got exactly one
    assert stats["frames_without_tick"] == 4
    assert stats["frame_ticks"] == 2
    t6 = next(t for t, s, _ in steps if s == 6)
    # Taken as soon as the stuck tick ended, not at the fallback deadline (t1 + 150 ms).
    assert t6 - t_release < 0.05, (t_release, t6, steps)


def test_teleop_is_written_between_frame_ticks(tmp_path):
    """At 5 Hz frames, a joystick command is written at once, not at the next frame."""
    with Rig(tmp_path, **{"control.rate_hz": 5, "control.max_frame_age_ms": 1000}) as rig:
        rig.modes.set_mode("manual")
        rig.cam.shoot()
        time.sleep(0.1)
        delays = []
        for k in range(5):
            rig.cam.shoot()
            time.sleep(0.07)
            t0 = time.monotonic()
            n = len(rig.act.calls)
            rig.loop.teleop.set([0.1 * k, 0.2])
            time.sleep(0.13)
            w = next((t for t, kind in rig.act.calls[n:] if kind == "write"), None)
            delays.append(None if w is None else w - t0)
        stats = rig.loop.stats()
    assert stats["teleop_immediate_writes"] >= 4
    assert None not in delays and sorted(delays)[2] < 0.03, delays


# ----------------------------------------------------------------------------- the daemon


@pytest.mark.parametrize(
    "trigger",
    # frame (the default) in the fast lane; the timer twin waits as long again: make test
    ["frame", pytest.param("timer", marks=pytest.mark.slow)],
)
def test_daemon_on_the_sim_drives_in_both_trigger_modes(tmp_path, trigger):
    async def body():
        daemon, act = make_daemon(tmp_path, **{"control.trigger": trigger, "control.rate_hz": 40})
        task = await start_daemon(daemon)
        boot = act.snapshot()
        daemon.brain.set_mode("autonomous")
        await asyncio.sleep(0.8)
        daemon.control.timing.reset()
        await asyncio.sleep(2.0)
        stats = daemon.brain.stats().to_json()
        await stop_daemon(daemon, task)
        return boot, stats, daemon

    boot, stats, daemon = asyncio.run(body())
    assert boot and all(k == "neutral" for _, k, _ in boot)  # never boots into motion
    c = stats["control"]
    assert c["trigger"] == trigger and stats["sim"]["progress_m"] > 1.0
    assert c["ticks"] >= 60
    camera_fps = daemon.devices.camera.fps
    if trigger == "frame":
        # The sim camera renders at the control rate and nearly every tick is a frame's.
        assert camera_fps == 40.0
        assert c["frame_ticks"] >= 0.9 * c["ticks"]
        assert c["frame_period_ms"]["p50"] == pytest.approx(25.0, abs=0.5)
    else:
        assert camera_fps == 30.0  # its own fps from the config
        assert c["ticks_without_frame"] > 0.1 * c["ticks"]  # 40 Hz ticks on a 30 fps camera


# ----------------------------------------------------------------------------- camera rate


def _pi_config(trigger: str):
    raw = yaml.safe_load((ROOT / "configs" / "pi5-donkey.yaml").read_text())
    raw.setdefault("control", {}).update(rate_hz=50, trigger=trigger)
    return parse_config(raw)


@pytest.mark.parametrize(("trigger", "frame_us"), [("frame", 20000), ("timer", 33333)])
def test_pi_camera_frame_duration_follows_the_control_rate(monkeypatch, trigger, frame_us):
    lib = FakePicamera2Lib().install(monkeypatch)
    camera_cfg, _ = _pi_config(trigger).frame_sensors()
    cam = Picamera2Camera(camera_cfg)
    cam.start()
    created = next(c for c in lib.calls if c[0] == "create_video_configuration")
    assert created[2] == {"FrameDurationLimits": (frame_us, frame_us)}
    cam.close()


def test_realsense_rate_is_the_offered_one_nearest_above():
    assert pick_rate(30.0, {6, 15, 30, 60}) == 30.0  # offered: as asked
    assert pick_rate(50.0, {6, 15, 30, 60, 90}) == 60.0  # no 50: the next faster mode
    assert pick_rate(100.0, {6, 15, 30, 60}) == 60.0  # nothing faster: the fastest
    assert pick_rate(20.0, set()) == 20.0  # nothing listed: ask the pipeline as configured


# ----------------------------------------------------------------------------- one tick at a time


class FakeClock:
    def __init__(self) -> None:
        self.t = 50.0

    def __call__(self) -> float:
        return self.t


class CountingPolicy:
    """The inference boundary: a fixed action per call, counted."""

    has_model = True

    def __init__(self) -> None:
        self.calls = 0

    def infer(self, image, t_obs):
        self.calls += 1

        class Result:
            action = np.array([0.1 * self.calls, 0.5])
            latency_s = 0.001
            model_version = "test"

        return Result()

    def reset_state(self) -> None:
        pass


def test_a_fallback_tick_holds_the_policy_decision_on_its_frame(tmp_path):
    """On the injected clock: no second inference on one frame; neutral once it is stale."""
    overrides = {"safety.slew_per_s": {}, "control.autopilot": "policy"}
    cfg = parse_config(sim_config(tmp_path, **overrides))
    clock = FakeClock()
    hub = SensorHub(clock=clock)
    hub.has_camera = True
    act = LoggingActuators()
    written: list[list[float] | None] = []
    act.write = lambda a: written.append([round(float(v), 3) for v in a])  # type: ignore[method-assign]
    act.neutral = lambda: written.append(None)  # type: ignore[method-assign]
    policy = CountingPolicy()
    modes = ModeManager(clock)
    loop = ControlLoop(
        cfg, modes, hub, act, SafetyLayer(CAR_ACTION_SPEC, cfg.safety), policy=policy, clock=clock
    )
    loop.trigger = "frame"
    modes.set_mode("autonomous")
    img = np.zeros((8, 8, 3), np.uint8)
    hub.publish("camera", Frame(img, t_capture=clock.t, seq=1))
    assert loop._tick(clock()) is not None
    clock.t += 0.075  # a fallback tick: same frame, still fresh (max age 150 ms)
    assert loop._tick(clock()) is None
    assert policy.calls == 1 and written == [[0.1, 0.5], [0.1, 0.5]]
    hub.publish("camera", Frame(img, t_capture=clock.t, seq=2))
    assert loop._tick(clock()).seq == 2
    assert policy.calls == 2 and written[-1] == [0.2, 0.5]
    clock.t += 0.2  # the camera stalls: the frame goes stale
    loop._tick(clock())
    assert written[-1] is None and loop.last_output.reason == "stale_frame"
    assert policy.calls == 2
    s = loop.stats()
    assert (s["frame_ticks"], s["ticks_without_frame"], s["frames_without_tick"]) == (2, 2, 0)


def test_shadow_inference_runs_after_the_write_and_is_recorded(tmp_path):
    overrides = {"safety.slew_per_s": {}, "policy.shadow": True}
    cfg = parse_config(sim_config(tmp_path, **overrides))
    clock = FakeClock()
    hub = SensorHub(clock=clock)
    hub.has_camera = True
    order: list[str] = []
    act = LoggingActuators()
    act.write = lambda a: order.append("write")  # type: ignore[method-assign]
    policy = CountingPolicy()
    infer = policy.infer
    policy.infer = lambda img, t: (order.append("infer"), infer(img, t))[1]  # type: ignore[method-assign]
    modes = ModeManager(clock)
    loop = ControlLoop(
        cfg, modes, hub, act, SafetyLayer(CAR_ACTION_SPEC, cfg.safety), policy=policy, clock=clock
    )
    steps = []
    loop.recorder = steps.append
    modes.set_mode("manual")
    loop.teleop.set([0.0, 0.3])
    hub.publish("camera", Frame(np.zeros((8, 8, 3), np.uint8), t_capture=clock.t, seq=1))
    loop._tick(clock())
    assert order == ["write", "infer"]  # the comparison never delays the driver's write
    assert steps[-1].source == "teleop"
    assert np.allclose(steps[-1].extra["shadow_action"], [0.1, 0.5])

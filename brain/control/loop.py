"""The control loop: a tick on each new camera frame, or on a fixed-rate timer.

It runs on its own thread rather than as an asyncio task: the event loop's
timers round sleeps up to whole milliseconds and share the thread with network
handlers, which would put milliseconds of jitter on every tick.  A dedicated
thread waiting on the monotonic clock towards absolute deadlines keeps the
timing steady, and the supervisor still owns it as one task.

With ``control.trigger: frame`` (the default with a camera) the capture thread
wakes this one as each frame lands, so a frame is acted on within a wake-up
instead of waiting up to a period for the next timer tick; a deadline fallback
keeps the ticks (watchdogs, teleop, neutral) going when the camera stalls.  The
rule for when a tick is due lives in ``brain.control.trigger``.

Each tick:  freshest observation -> command source by mode -> safety layer ->
actuators -> step to the recorder hook.  Whatever way the thread ends (stop,
exception, interpreter exit), the ``finally`` writes neutral.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from brain.config import Config
from brain.control.safety import SafetyLayer, SafetyOutput
from brain.control.timing import LoopTiming
from brain.control.trigger import TickSchedule, Trigger
from brain.hardware.protocols import Actuators, DepthFrame, Frame
from brain.modes import Mode, ModeManager
from brain.threads import run_thread

if TYPE_CHECKING:  # the daemon hands the hub in; capture imports control.timing
    from brain.capture import SensorHub

_log = logging.getLogger(__name__)


class InferenceOutput(Protocol):
    """What the loop reads of one inference (brain.policy.InferenceResult)."""

    @property
    def action(self) -> np.ndarray: ...

    @property
    def latency_s(self) -> float: ...

    @property
    def model_version(self) -> str: ...


class Inference(Protocol):
    """What the loop needs from the policy runner (brain.policy.PolicyRunner)."""

    def infer(self, image: np.ndarray, t_obs: float) -> InferenceOutput | None: ...

    def reset_state(self) -> None: ...

    @property
    def has_model(self) -> bool: ...


class TeleopInput:
    """The latest teleop command and when it arrived; written by the API, read each tick."""

    def __init__(
        self,
        size: int,
        clock: Callable[[], float] = time.monotonic,
        on_set: Callable[[], None] | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._cmd: np.ndarray | None = None
        self._t: float | None = None
        self._size = size
        self._clock = clock
        self._on_set = on_set
        self.received = 0

    def set(self, action: Any) -> None:
        arr = np.asarray(action, dtype=np.float64).reshape(-1)
        if arr.shape != (self._size,):
            raise ValueError(f"teleop command needs {self._size} values, got {arr.size}")
        with self._lock:
            self._cmd = arr
            self._t = self._clock()
            self.received += 1
        if self._on_set is not None:
            self._on_set()

    def clear(self) -> None:
        with self._lock:
            self._cmd = None
            self._t = None

    def get(self) -> tuple[np.ndarray | None, float | None]:
        with self._lock:
            return self._cmd, self._t


class OperatorHeartbeat:
    """When an operator last said "I am watching" (supervised autonomy); any thread."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._t: float | None = None  # one float: assignment is atomic, no lock needed
        self.received = 0

    def beat(self) -> float:
        self._t = self._clock()
        self.received += 1
        return self._t

    @property
    def last(self) -> float | None:
        return self._t


@dataclass(slots=True)
class Step:
    """One tick as the recorder sees it.  Frames are references, never copies."""

    tick: int
    t: float
    mode: Mode
    mode_generation: int  # changes with every mode change: one episode never spans two
    source: str
    frame: Frame | None
    depth: DepthFrame | None
    command: np.ndarray | None
    action: np.ndarray
    neutral: bool
    safety_reason: str | None
    recordable: bool
    extra: dict[str, Any] = field(default_factory=dict)


RecorderHook = Callable[[Step], None]


class ControlLoop:
    """Owns the actuators while it runs; everyone else talks to it through modes and teleop."""

    def __init__(
        self,
        config: Config,
        modes: ModeManager,
        sensors: SensorHub,
        actuators: Actuators,
        safety: SafetyLayer,
        *,
        policy: Inference | None = None,
        expert: Callable[[], np.ndarray] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = config
        self.modes = modes
        self.sensors = sensors
        self.actuators = actuators
        self.safety = safety
        self.policy = policy
        self.expert = expert
        self.clock = clock
        self.period = 1.0 / config.control.rate_hz
        self.max_age = config.control.max_frame_age_ms / 1000.0
        self.teleop = TeleopInput(actuators.action_spec.size, clock, on_set=self._on_teleop)
        self.heartbeat = OperatorHeartbeat(clock)
        self.deadman_holding = False
        self.timing = LoopTiming(config.control.stats_window)
        self.faults: dict[str, int] = {"stale_frame": 0, "policy_miss": 0, "recorder": 0}
        self.recorder: RecorderHook | None = None
        self.last_tick_t: float | None = None
        self.last_output: SafetyOutput | None = None
        # When the control thread last wrote neutral: the e-stop line's proof that it did.
        self.neutral_written_t: float | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._teleop_new = threading.Event()
        self._mode_new = threading.Event()
        self._last_early_t = -1e9
        self.teleop_immediate_writes = 0
        self._mode_gen = -1
        # Camera frames are numbered by the hub as they arrive; the last one a tick took.
        self._taken_count = 0
        self._held_policy: tuple[Frame, np.ndarray | None] | None = None
        # The configured trigger; run_blocking falls back to the timer without a camera.
        self.trigger: Trigger = config.control.trigger
        self._running = False
        modes.subscribe(self._on_mode_change)

    # ------------------------------------------------------------------ control from outside

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    @property
    def running(self) -> bool:
        return self._running

    def tick_age(self) -> float | None:
        """Seconds since the last tick started, for the systemd watchdog."""
        return None if self.last_tick_t is None else self.clock() - self.last_tick_t

    def _on_mode_change(self, change: Any) -> None:
        # Wake the thread so a stop takes effect now, not at the next deadline.
        self._mode_new.set()
        self._wake.set()

    def _on_frame(self) -> None:
        # Called on the capture thread: only wake the control thread, never tick here.
        self._wake.set()

    def _on_teleop(self) -> None:
        if self.cfg.control.teleop_immediate:
            self._teleop_new.set()
            self._wake.set()

    # ------------------------------------------------------------------ the thread

    def run_blocking(self) -> None:
        """The control thread's body.  Returns when stop() is called; raises on a crash."""
        self._stop.clear()
        self._running = True
        try:
            self.actuators.neutral()
            frames = self.cfg.control.trigger == "frame" and self.sensors.has_camera
            self.trigger = "frame" if frames else "timer"
            if frames:
                self.sensors.on_camera = self._on_frame
            schedule = TickSchedule(self.trigger, self.period, self.clock())
            while (due := self._wait_for_tick(schedule)) is not None:
                start = self.clock()
                self.timing.jitter.add(abs(start - due))
                frame = self._tick(start)
                schedule.ticked(start, None if frame is None else frame.t_capture)
                self.timing.ticks += 1
                overran, missed = schedule.finished(self.clock(), due)
                if overran:
                    self.timing.overruns += 1
                    self.timing.skipped += missed
        finally:
            self._running = False
            if self.sensors.on_camera == self._on_frame:
                self.sensors.on_camera = None
            self._write_neutral("loop_exit")

    def _pending_frame(self) -> tuple[float, float] | None:
        """(arrival, capture time) of a camera frame no tick has taken yet, if there is one."""
        a = self.sensors.camera_arrival()
        if a.count == self._taken_count or a.frame is None or a.t_arrival is None:
            return None
        return a.t_arrival, a.frame.t_capture

    def _wait_for_tick(self, schedule: TickSchedule) -> float | None:
        """Wait until the next tick is due and return when it was due; None once stopped.

        Every frame arrival, mode change and teleop command wakes the wait; the due
        time is worked out again each time, so a frame that landed during the last
        tick is taken at once, and a burst of frames still makes only one tick.
        """
        while not self._stop.is_set():
            due = schedule.due(self._pending_frame() if schedule.trigger == "frame" else None)
            remaining = due - self.clock()
            if remaining <= 0:
                return due
            if self._wake.wait(remaining):
                self._wake.clear()
                mode_changed = self._mode_new.is_set()
                self._mode_new.clear()
                if not self.modes.flags.motion:
                    if mode_changed:  # not on every frame's wake-up in IDLE
                        self._write_neutral("mode")
                elif self._teleop_new.is_set():
                    self._teleop_new.clear()
                    self._teleop_write()
        return None

    def _teleop_write(self) -> None:
        """A joystick command between ticks: the same safety filter, written now.

        Only in MANUAL with a fresh camera frame and no mode change pending (the
        tick handles those); at most one early write per quarter period, so a
        flooding client cannot turn the control thread into a busy writer.  An e-stop that
        lands during this write wakes the thread again and is written next.
        """
        now = self.clock()
        if self.modes.mode is not Mode.MANUAL or self.modes.generation != self._mode_gen:
            return
        if now - self._last_early_t < self.period / 4:
            return
        if self.sensors.has_camera:
            frame, _ = self.sensors.latest()
            if frame is None or now - frame.t_capture > self.max_age:
                return
        cmd, t = self.teleop.get()
        if cmd is None:
            return
        out = self.safety.filter(cmd, command_t=t, now=now, motion_allowed=True)
        self._actuate(out)
        self._last_early_t = now
        self.last_output = out
        self.teleop_immediate_writes += 1

    def _actuate(self, out: SafetyOutput) -> None:
        if out.neutral:
            self.actuators.neutral()
            self.neutral_written_t = self.clock()
        else:
            self.actuators.write(out.action)

    def _write_neutral(self, reason: str) -> None:
        try:
            self._actuate(self.safety.force_neutral(self.clock(), reason))
        except Exception:
            _log.exception("writing neutral failed (%s)", reason)

    def emergency_neutral(self, reason: str) -> None:
        """Neutral from another thread, for when the control thread does not answer.

        Only the e-stop line calls this, after the mode is latched and the control
        thread failed to write neutral within a few periods (it may be stuck in a
        driver or in inference); the slew state is left to the control thread.
        """
        try:
            self.actuators.neutral()
            self.neutral_written_t = self.clock()
        except Exception:
            _log.exception("emergency neutral failed (%s)", reason)

    def _take_frame(self) -> tuple[Frame | None, DepthFrame | None, bool]:
        """The newest frames, and whether the camera frame is one no tick has had yet."""
        arrival = self.sensors.camera_arrival()
        _, depth = self.sensors.latest()
        new = arrival.count != self._taken_count
        if new:
            if arrival.count > self._taken_count + 1:
                # Replaced before any tick took them: a camera faster than the ticks.
                self.timing.frames_without_tick += arrival.count - self._taken_count - 1
            self._taken_count = arrival.count
            self.timing.frame_ticks += 1
        elif self.sensors.has_camera:
            self.timing.ticks_without_frame += 1
        return arrival.frame, depth, new

    def _tick(self, now: float) -> Frame | None:
        """One tick; returns the new camera frame it acted on, if it had one."""
        self.last_tick_t = now
        self._teleop_new.clear()  # this tick reads the latest command anyway
        mode = self.modes.mode
        flags = self.modes.flags
        if self.modes.generation != self._mode_gen:
            self._mode_gen = self.modes.generation
            self._enter_mode(mode)

        frame, depth, new_frame = self._take_frame()
        stale = False
        if self.sensors.has_camera:
            if frame is None:
                stale = True
            else:
                age = now - frame.t_capture
                self.timing.frame_age.add(age)
                stale = age > self.max_age
            if stale:
                self.faults["stale_frame"] += 1

        source, command, command_t, extra = self._choose_command(mode, frame, now, stale, new_frame)
        deadman = mode is Mode.AUTONOMOUS and self._deadman(now)
        motion = flags.motion and not stale and not deadman
        block = "no_motion"
        if flags.motion and stale:
            block = "stale_frame"
        elif flags.motion and deadman:
            block = "deadman"
        out = self.safety.filter(
            command, command_t=command_t, now=now, motion_allowed=motion, block_reason=block
        )
        self._actuate(out)
        t_act = self.clock()
        self.timing.compute.add(t_act - now)
        if frame is not None and new_frame:
            # Sensor-to-actuation: a frame's capture to the first write decided on it.
            self.timing.latency.add(t_act - frame.t_capture)
        self.last_output = out
        if source in ("teleop", "expert") and self.cfg.policy.shadow and not stale:
            # The shadow policy only compares itself with the driver, so it runs after the
            # write instead of delaying it.
            extra["shadow_action"] = self._run_policy(frame, stale, extra, new_frame)

        hook = self.recorder
        if hook is not None:
            recordable = flags.record and (
                mode is not Mode.AUTONOMOUS or self.cfg.control.record_autonomous
            )
            step = Step(
                tick=self.timing.ticks,
                t=now,
                mode=mode,
                mode_generation=self._mode_gen,
                source=source,
                frame=frame,
                depth=depth,
                command=command,
                action=out.action,
                neutral=out.neutral,
                safety_reason=out.reason,
                recordable=recordable,
                extra=extra,
            )
            try:
                hook(step)
            except Exception:  # the recorder must never stop the car from being driven
                self.faults["recorder"] += 1
                if self.faults["recorder"] == 1:
                    _log.exception("recorder hook failed")
        return frame if new_frame else None

    def _deadman(self, now: float) -> bool:
        """Supervised autonomy: hold neutral while the operator's heartbeat is missing."""
        holding = self.safety.deadman_holds(self.heartbeat.last, now)
        if holding != self.deadman_holding:
            self.deadman_holding = holding
            if holding:
                _log.warning(
                    "no operator heartbeat for %.1f s in autonomous: holding neutral",
                    self.safety.heartbeat_s,
                )
            else:
                _log.info("operator heartbeat back: autonomous driving resumes")
        return holding

    def _enter_mode(self, mode: Mode) -> None:
        if mode is not Mode.AUTONOMOUS:
            self.deadman_holding = False
        self._held_policy = None  # a decision taken in another mode never carries over
        if mode is Mode.AUTONOMOUS and self.policy is not None:
            self.policy.reset_state()
        if mode is not Mode.MANUAL:
            # A stale joystick position must not resume when MANUAL is entered again.
            self.teleop.clear()

    def _choose_command(
        self, mode: Mode, frame: Frame | None, now: float, stale: bool, new_frame: bool = True
    ) -> tuple[str, np.ndarray | None, float | None, dict[str, Any]]:
        extra: dict[str, Any] = {}
        if mode is Mode.MANUAL:
            cmd, t = self.teleop.get()
            source = "teleop"
        elif mode is Mode.AUTONOMOUS and self.cfg.control.autopilot == "expert":
            cmd, t, source = (self.expert() if self.expert else None), now, "expert"
        elif mode is Mode.AUTONOMOUS:
            cmd, t, source = self._run_policy(frame, stale, extra, new_frame), now, "policy"
            return source, cmd, t, extra
        else:
            return "neutral", None, None, extra
        return source, cmd, t, extra

    def _run_policy(
        self, frame: Frame | None, stale: bool, extra: dict[str, Any], new_frame: bool
    ) -> np.ndarray | None:
        if self.policy is None or frame is None or stale:
            return None
        held = self._held_policy
        if self.trigger == "frame" and not new_frame and held is not None and held[0] is frame:
            # A fallback tick on a frame already acted on: the decision on it stands
            # (running again would step the model's memory twice on one image) until
            # a new frame comes or this one goes stale.
            return held[1]
        res = self.policy.infer(frame.data, frame.t_capture)
        action = None if res is None else res.action
        self._held_policy = (frame, action)
        if res is None:
            self.faults["policy_miss"] += 1
            return None
        extra["inference_ms"] = round(res.latency_s * 1000, 3)
        extra["model_version"] = res.model_version
        return action

    # ------------------------------------------------------------------ the supervised task

    async def run(self) -> None:
        """Run the control thread as one supervised task; a crash propagates to the supervisor."""
        await run_thread("control", self.run_blocking, self.stop, join_timeout_s=1.0)

    def stats(self) -> dict[str, Any]:
        out = self.last_output
        return {
            "rate_hz": self.cfg.control.rate_hz,
            "trigger": self.trigger,
            "running": self._running,
            **self.timing.summary(),
            "frame_period_ms": (
                self.sensors.camera_interval.summary() if self.sensors.has_camera else None
            ),
            "faults": dict(self.faults),
            "safety": self.safety.stats(),
            "last_action": None if out is None else [round(float(v), 4) for v in out.action],
            "last_neutral": None if out is None else out.neutral,
            "teleop_received": self.teleop.received,
            "teleop_immediate_writes": self.teleop_immediate_writes,
            "deadman": self.deadman_status(),
        }

    def deadman_status(self) -> dict[str, Any]:
        """Supervised autonomy for status/telemetry: on?, holding the car?, heartbeat age."""
        last = self.heartbeat.last
        return {
            "heartbeat_s": self.safety.heartbeat_s,
            "holding": self.deadman_holding,
            "heartbeat_age_s": None if last is None else round(self.clock() - last, 3),
        }

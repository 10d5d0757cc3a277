"""The brain's side of BrainInterface: what the network is allowed to see and ask."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from brain import __version__
from brain.capture import SensorHub
from brain.config import Config
from brain.control.loop import ControlLoop
from brain.interface import CommandError
from brain.modes import FLAGS, ModeError, ModeManager
from brain.recorder import Recorder, RecordingRefused


class BrainHandle:
    """Thread-safe facade over the running brain; every method is cheap and JSON-ready."""

    def __init__(
        self,
        config: Config,
        modes: ModeManager,
        control: ControlLoop,
        sensors: SensorHub,
        *,
        policy_stats: Callable[[], dict[str, Any]] | None = None,
        task_status: Callable[[], dict[str, Any]] | None = None,
        sim_metrics: Callable[[], dict[str, Any]] | None = None,
        recorder: Recorder | None = None,
    ) -> None:
        self._cfg = config
        self._modes = modes
        self._control = control
        self._sensors = sensors
        self._policy_stats = policy_stats
        self._task_status = task_status
        self._sim_metrics = sim_metrics
        self._recorder = recorder
        self._started = time.monotonic()

    @property
    def robot_id(self) -> str:
        return self._cfg.robot.id

    @property
    def action_names(self) -> tuple[str, ...]:
        return self._cfg.action_names

    def status(self) -> dict[str, Any]:
        mode = self._modes.mode
        flags = FLAGS[mode]
        policy = self._policy_stats() if self._policy_stats else {}
        return {
            "robot_id": self._cfg.robot.id,
            "robot_kind": self._cfg.robot.kind,
            "software_version": __version__,
            "mode": mode.value,
            "flags": {"motion": flags.motion, "record": flags.record, "inference": flags.inference},
            "estop_reason": self._modes.estop_reason,
            "autopilot": self._cfg.control.autopilot,
            "model_version": policy.get("model_version"),
            "uptime_s": round(time.monotonic() - self._started, 1),
            "control_running": self._control.running,
            "tasks": self._task_status() if self._task_status else {},
            "recording": self._recorder.status() if self._recorder else None,
        }

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "control": self._control.stats(),
            "sensors": self._sensors.summary(),
            "policy": self._policy_stats() if self._policy_stats else None,
        }
        if self._sim_metrics is not None:
            out["sim"] = self._sim_metrics()
        return out

    def reset_stats(self) -> None:
        self._control.timing.reset()
        self._sensors.skew.reset()

    def set_mode(self, mode: str, reason: str = "") -> dict[str, Any]:
        if mode == "autonomous" and self._cfg.control.autopilot == "policy":
            ps = self._policy_stats() if self._policy_stats else {}
            if not ps.get("model_version"):
                raise CommandError("no policy model is installed; autonomous mode needs one")
        try:
            change = self._modes.set_mode(mode, reason or "api")
        except ModeError as exc:
            raise CommandError(str(exc)) from None
        return {"from": change.old.value, "to": change.new.value}

    def estop(self, reason: str) -> dict[str, Any]:
        change = self._modes.estop(reason or "api")
        return {"from": change.old.value, "to": change.new.value}

    def reset_estop(self) -> dict[str, Any]:
        try:
            change = self._modes.reset_estop("api")
        except ModeError as exc:
            raise CommandError(str(exc)) from None
        return {"from": change.old.value, "to": change.new.value}

    def start_recording(self, tags: list[str] | None = None) -> dict[str, Any]:
        if self._recorder is None:
            raise CommandError("recording is not available")
        try:
            return self._recorder.start_recording(tags)
        except RecordingRefused as exc:
            raise CommandError(str(exc)) from None

    def stop_recording(self) -> dict[str, Any]:
        if self._recorder is None:
            raise CommandError("recording is not available")
        return self._recorder.stop_recording()

    def teleop(self, action: list[float]) -> None:
        try:
            self._control.teleop.set(action)
        except ValueError as exc:
            raise CommandError(str(exc)) from None

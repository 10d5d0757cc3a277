"""The brain's side of BrainInterface: what the network is allowed to see and ask."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from brain import __version__
from brain.capture import SensorHub
from brain.config import Config
from brain.control.loop import ControlLoop
from brain.episodes import EpisodeStore
from brain.interface import CameraFrame, CommandError, TrainerInterface, UpdaterInterface
from brain.interface_models import (
    BrainStats,
    BrainStatus,
    DeadmanStatus,
    EpisodeDeleted,
    EpisodeSummary,
    ExportSummary,
    ModeChange,
    ModeFlags,
    RecordingCounters,
    RecordingStatus,
    SimPose,
    TaskSummary,
    Telemetry,
    TrainingStatus,
    UpdateResult,
    UpdateStatus,
)
from brain.modes import FLAGS, ModeError, ModeManager
from brain.modes import ModeChange as Transition
from brain.procinfo import process_info
from brain.recorder import Recorder, RecordingRefused


class BrainHandle:
    """Thread-safe facade over the running brain; every method is cheap and returns a model.

    The components behind it (recorder, updater, trainer, episode store) speak dicts; this
    is where they become the typed replies of brain/interface_models.py.
    """

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
        updater: UpdaterInterface | None = None,
        trainer: TrainerInterface | None = None,
    ) -> None:
        self._cfg = config
        self._modes = modes
        self._control = control
        self._sensors = sensors
        self._policy_stats = policy_stats
        self._task_status = task_status
        self._sim_metrics = sim_metrics
        self._recorder = recorder
        self.updater = updater
        self.trainer = trainer
        self._episodes = EpisodeStore(
            config, recording_id=lambda: recorder.status().get("episode_id") if recorder else None
        )
        self._started = time.monotonic()

    @property
    def robot_id(self) -> str:
        return self._cfg.robot.id

    @property
    def action_names(self) -> tuple[str, ...]:
        return self._cfg.action_names

    def status(self) -> BrainStatus:
        mode = self._modes.mode
        flags = FLAGS[mode]
        policy = self._policy_stats() if self._policy_stats else {}
        tasks = self._task_status() if self._task_status else {}
        return BrainStatus(
            robot_id=self._cfg.robot.id,
            robot_kind=self._cfg.robot.kind,
            software_version=__version__,
            mode=mode.value,
            flags=ModeFlags(motion=flags.motion, record=flags.record, inference=flags.inference),
            estop_reason=self._modes.estop_reason,
            autopilot=self._cfg.control.autopilot,
            model_version=policy.get("model_version"),
            uptime_s=round(time.monotonic() - self._started, 1),
            control_running=self._control.running,
            tasks={name: TaskSummary.model_validate(t) for name, t in tasks.items()},
            recording=self._recording_status(),
            deadman=DeadmanStatus.model_validate(self._control.deadman_status()),
        )

    def _recording_status(self) -> RecordingStatus | None:
        return (
            None
            if self._recorder is None
            else RecordingStatus.model_validate(self._recorder.status())
        )

    def stats(self) -> BrainStats:
        sections: dict[str, Any] = {}  # the optional ones: absent, not null, without the part
        if self._recorder is not None:
            r = self._recorder.status()
            keys = ("steps_written", "steps_dropped", "queue_depth", "writer_process")
            sections["recording"] = RecordingCounters.model_validate({k: r[k] for k in keys})
        if self._sim_metrics is not None:
            sections["sim"] = self._sim_metrics()
        return BrainStats(
            control=self._control.stats(),
            sensors=self._sensors.summary(),
            policy=self._policy_stats() if self._policy_stats else None,
            process=process_info(),
            **sections,
        )

    def reset_stats(self) -> None:
        self._control.timing.reset()
        self._sensors.skew.reset()

    def set_mode(self, mode: str, reason: str = "") -> ModeChange:
        if mode == "autonomous" and self._cfg.control.autopilot == "policy":
            ps = self._policy_stats() if self._policy_stats else {}
            if not ps.get("model_version"):
                raise CommandError("no policy model is installed; autonomous mode needs one")
        try:
            change = self._modes.set_mode(mode, reason or "api")
        except ModeError as exc:
            raise CommandError(str(exc)) from None
        return _change(change)

    def estop(self, reason: str) -> ModeChange:
        return _change(self._modes.estop(reason or "api"))

    def reset_estop(self) -> ModeChange:
        try:
            change = self._modes.reset_estop("api")
        except ModeError as exc:
            raise CommandError(str(exc)) from None
        return _change(change)

    def start_recording(self, tags: list[str] | None = None) -> RecordingStatus:
        if self._recorder is None:
            raise CommandError("recording is not available")
        try:
            return RecordingStatus.model_validate(self._recorder.start_recording(tags))
        except RecordingRefused as exc:
            raise CommandError(str(exc)) from None

    def stop_recording(self) -> RecordingStatus:
        if self._recorder is None:
            raise CommandError("recording is not available")
        return RecordingStatus.model_validate(self._recorder.stop_recording())

    def teleop(self, action: list[float]) -> None:
        try:
            self._control.teleop.set(action)
        except ValueError as exc:
            raise CommandError(str(exc)) from None

    def heartbeat(self) -> DeadmanStatus:
        self._control.heartbeat.beat()
        return DeadmanStatus.model_validate(self._control.deadman_status())

    # -- streaming ---------------------------------------------------------------------

    def telemetry(self) -> Telemetry:
        last = self._control.last_output  # cheap: no percentiles at streaming rate
        sections: dict[str, Any] = {}  # the sim pose: absent, not null, on real hardware
        if self._sim_metrics is not None:
            m = self._sim_metrics()
            sections["sim"] = SimPose.model_validate(
                {k: m.get(k) for k in ("cte_m", "speed_mps", "laps", "on_track")}
            )
        return Telemetry(
            t=round(time.monotonic(), 4),
            mode=self._modes.mode.value,
            estop_reason=self._modes.estop_reason,
            action=None if last is None else [round(float(v), 4) for v in last.action],
            neutral=None if last is None else last.neutral,
            ticks=self._control.timing.ticks,
            model_version=(self._policy_stats() or {}).get("model_version")
            if self._policy_stats
            else None,
            recording=bool(self._recorder and self._recorder.status().get("episode_id")),
            deadman_holding=self._control.deadman_holding,
            **sections,
        )

    def latest_frame(self) -> CameraFrame | None:
        cam, _ = self._sensors.latest()
        if cam is None:
            return None
        return CameraFrame(rgb=cam.data, t_capture=cam.t_capture, seq=cam.seq)

    # -- episodes --------------------------------------------------------------------------

    def list_episodes(self) -> list[EpisodeSummary]:
        return [EpisodeSummary.model_validate(row) for row in self._episodes.list()]

    def delete_episode(self, episode_id: str) -> EpisodeDeleted:
        return EpisodeDeleted.model_validate(self._episodes.delete(episode_id))

    async def export_episodes(self, options: dict[str, Any]) -> ExportSummary:
        return ExportSummary.model_validate(await self._episodes.export(options))

    # -- local training ----------------------------------------------------------------------

    def _need_trainer(self) -> TrainerInterface:
        if self.trainer is None:
            raise CommandError("local training is not available on this robot")
        return self.trainer

    def training_status(self) -> TrainingStatus:
        if self.trainer is None:
            return TrainingStatus(available=False)
        return TrainingStatus.model_validate(self.trainer.status())

    def start_training(self, options: dict[str, Any]) -> TrainingStatus:
        return TrainingStatus.model_validate(self._need_trainer().start(options))

    def stop_training(self) -> TrainingStatus:
        return TrainingStatus.model_validate(self._need_trainer().stop())

    # -- updates -----------------------------------------------------------------------------

    def _need_updater(self) -> UpdaterInterface:
        if self.updater is None:
            raise CommandError("over-the-air updates are not available on this robot")
        return self.updater

    def update_status(self) -> UpdateStatus:
        if self.updater is None:
            return UpdateStatus(available=False)
        return UpdateStatus.model_validate(self.updater.status())

    async def check_update(self) -> UpdateResult:
        return UpdateResult.model_validate(await self._need_updater().check())

    async def install_update(self, archive: Path) -> UpdateResult:
        return UpdateResult.model_validate(await self._need_updater().install(Path(archive)))

    async def rollback_update(self) -> UpdateResult:
        return UpdateResult.model_validate(await self._need_updater().rollback())


def _change(change: Transition) -> ModeChange:
    return ModeChange.model_validate({"from": change.old.value, "to": change.new.value})

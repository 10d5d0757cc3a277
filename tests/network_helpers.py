"""The brain as the network side sees it (BrainInterface), with state a test can change.

The network services talk to the brain only through BrainInterface; this
stands in for the running daemon at that boundary.  Episode export is the
real one (brain.episodes.EpisodeStore over real RLDS files), and every motion
method records the call so a test can prove the cloud never reached it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from brain.config import Config, parse_config
from brain.episodes import EpisodeStore
from brain.interface import CommandError
from brain.interface_models import (
    BrainStatus,
    DeadmanStatus,
    EpisodeSummary,
    ExportSummary,
    ModeChange,
    ModeFlags,
    RecordingStatus,
    Telemetry,
    TrainingStatus,
    UpdateResult,
    UpdateStatus,
)
from rlds.types import StepInput
from rlds.writer import EpisodeWriter


class FakeBrain:
    def __init__(self, config: Config | None = None, robot_id: str = "bot-1") -> None:
        self._robot_id = robot_id
        self.config = config
        self.mode = "idle"
        self.estop_reason: str | None = None
        self.model_version: str | None = "model-1"
        self.update = UpdateStatus(available=True, phase="idle", busy=False, last_result=None)
        self.update_checks = 0
        self.motion_calls: list[tuple[str, Any]] = []
        self.exports: list[dict[str, Any]] = []
        self._episodes = EpisodeStore(config) if config is not None else None

    @property
    def robot_id(self) -> str:
        return self._robot_id

    @property
    def action_names(self) -> tuple[str, ...]:
        return ("steering", "throttle")

    def status(self) -> BrainStatus:
        return BrainStatus(
            robot_id=self._robot_id,
            robot_kind="car",
            software_version="0.1.0",
            mode=self.mode,
            flags=ModeFlags(motion=False, record=False, inference=False),
            estop_reason=self.estop_reason,
            autopilot="policy",
            model_version=self.model_version,
            uptime_s=1.0,
            control_running=True,
            tasks={},
            recording=None,
            deadman=_DEADMAN,
        )

    def telemetry(self) -> Telemetry:
        return Telemetry(
            t=1.0,
            mode=self.mode,
            estop_reason=self.estop_reason,
            action=[0.0, 0.0],
            neutral=True,
            ticks=42,
            model_version=self.model_version,
            recording=False,
            deadman_holding=False,
        )

    def update_status(self) -> UpdateStatus:
        return self.update

    async def check_update(self) -> UpdateResult:
        self.update_checks += 1
        return UpdateResult.model_validate({"result": "up to date", **self.update.to_json()})

    def training_status(self) -> TrainingStatus:
        return TrainingStatus(available=False)

    def list_episodes(self) -> list[EpisodeSummary]:
        rows = self._episodes.list() if self._episodes else []
        return [EpisodeSummary.model_validate(r) for r in rows]

    async def export_episodes(self, options: dict[str, Any]) -> ExportSummary:
        assert self._episodes is not None, "FakeBrain needs a config to export"
        self.exports.append(dict(options))
        return ExportSummary.model_validate(await self._episodes.export(options))

    # Everything that moves, arms or changes the robot: recorded, so tests can assert none ran.
    def set_mode(self, mode: str, reason: str = "") -> ModeChange:
        self.motion_calls.append(("set_mode", mode))
        return ModeChange.model_validate({"from": self.mode, "to": self.mode})

    def estop(self, reason: str) -> ModeChange:
        self.motion_calls.append(("estop", reason))
        return ModeChange.model_validate({"from": self.mode, "to": self.mode})

    def reset_estop(self) -> ModeChange:
        self.motion_calls.append(("reset_estop", None))
        return ModeChange.model_validate({"from": self.mode, "to": self.mode})

    def teleop(self, action: list[float]) -> None:
        self.motion_calls.append(("teleop", action))

    def heartbeat(self) -> DeadmanStatus:
        self.motion_calls.append(("heartbeat", None))
        return _DEADMAN

    def start_recording(self, tags: list[str] | None = None) -> RecordingStatus:
        self.motion_calls.append(("start_recording", tags))
        raise CommandError("recording is not available")

    def stop_recording(self) -> RecordingStatus:
        self.motion_calls.append(("stop_recording", None))
        raise CommandError("recording is not available")


_DEADMAN = DeadmanStatus(heartbeat_s=None, holding=False, heartbeat_age_s=None)


def config_for(tmp_path: Path, **sections: dict[str, Any]) -> Config:
    raw: dict[str, Any] = {
        "robot": {"id": "bot-1"},
        "paths": {"state_dir": str(tmp_path / "state")},
    }
    raw.update(sections)
    return parse_config(raw)


def record_episodes(root: Path, n: int, steps: int = 12, seed: int = 0) -> None:
    """Real RLDS episodes (small images) for the export."""
    rng = np.random.default_rng(seed)
    for e in range(n):
        meta = {
            "robot_id": "bot-1",
            "rate_hz": 20.0,
            "action_names": ["steering", "throttle"],
            "mode": "manual",
        }
        w = EpisodeWriter(root, meta)
        for i in range(steps):
            t = 10.0 + e * 100 + i * 0.05
            w.append(
                StepInput(
                    t=t,
                    action=np.array([np.sin(i), 0.1 * e]),
                    observation={"image": rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)},
                    timestamps={"image": t - 0.01},
                    extra={"frame_seq": i},
                )
            )
        w.close()

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
from rlds.types import StepInput
from rlds.writer import EpisodeWriter


class FakeBrain:
    def __init__(self, config: Config | None = None, robot_id: str = "bot-1") -> None:
        self._robot_id = robot_id
        self.config = config
        self.mode = "idle"
        self.estop_reason: str | None = None
        self.model_version: str | None = "model-1"
        self.update: dict[str, Any] = {"state": "idle", "current": "model-1"}
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

    def status(self) -> dict[str, Any]:
        return {
            "robot_id": self._robot_id,
            "robot_kind": "car",
            "software_version": "0.1.0",
            "mode": self.mode,
            "estop_reason": self.estop_reason,
            "model_version": self.model_version,
            "tasks": {},
        }

    def telemetry(self) -> dict[str, Any]:
        return {"mode": self.mode, "ticks": 42, "action": [0.0, 0.0]}

    def update_status(self) -> dict[str, Any]:
        return dict(self.update)

    async def check_update(self) -> dict[str, Any]:
        self.update_checks += 1
        return {"checked": True, "installed": None}

    def training_status(self) -> dict[str, Any]:
        return {"available": False}

    def list_episodes(self) -> list[dict[str, Any]]:
        return self._episodes.list() if self._episodes else []

    async def export_episodes(self, options: dict[str, Any]) -> dict[str, Any]:
        assert self._episodes is not None, "FakeBrain needs a config to export"
        self.exports.append(dict(options))
        return await self._episodes.export(options)

    # Everything that moves, arms or changes the robot: recorded, so tests can assert none ran.
    def set_mode(self, mode: str, reason: str = "") -> dict[str, Any]:
        self.motion_calls.append(("set_mode", mode))
        return {}

    def estop(self, reason: str) -> dict[str, Any]:
        self.motion_calls.append(("estop", reason))
        return {}

    def reset_estop(self) -> dict[str, Any]:
        self.motion_calls.append(("reset_estop", None))
        return {}

    def teleop(self, action: list[float]) -> None:
        self.motion_calls.append(("teleop", action))

    def heartbeat(self) -> dict[str, Any]:
        self.motion_calls.append(("heartbeat", None))
        return {}

    def start_recording(self, tags: list[str] | None = None) -> dict[str, Any]:
        self.motion_calls.append(("start_recording", tags))
        return {}

    def stop_recording(self) -> dict[str, Any]:
        self.motion_calls.append(("stop_recording", None))
        return {}


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

"""The narrow interface the brain gives to the network side (edge_agent).

Commands in, state and telemetry out; nothing here hands out hardware, slots
or files.  Network services are discovered through the ``continuon.services``
entry-point group and receive a ``BrainInterface``; the brain never imports
them by name, so the dependency points one way only.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from brain.config import Config
from brain.interface_models import (
    BrainStats,
    BrainStatus,
    DeadmanStatus,
    EpisodeDeleted,
    EpisodeSummary,
    ExportSummary,
    ModeChange,
    RecordingStatus,
    Telemetry,
    TrainingStatus,
    UpdateResult,
    UpdateStatus,
)


class CommandError(ValueError):
    """A command was refused; the message says why (shown to the caller as-is)."""


class NotFound(CommandError):
    """The command names something that does not exist (an episode id, say)."""


@dataclass(frozen=True, slots=True)
class CameraFrame:
    """The latest camera image, for streaming: RGB uint8 [H, W, 3] and its capture time."""

    rgb: np.ndarray
    t_capture: float  # time.monotonic() of the exposure
    seq: int  # increases with every new frame; equal seq = same frame


@runtime_checkable
class UpdaterInterface(Protocol):
    """What the OTA updater (brain/ota) offers the brain handle; see docs/ota.md.

    Its dicts are validated into UpdateStatus / UpdateResult by the handle, so a key the
    models do not know is refused there instead of leaking onto the network unannounced.
    """

    def status(self) -> dict[str, Any]: ...

    async def check(self) -> dict[str, Any]:
        """Ask the update repository for a newer bundle and install it if there is one."""
        ...

    async def install(self, archive: Path) -> dict[str, Any]:
        """Install a side-loaded bundle archive (same trust checks as a download)."""
        ...

    async def rollback(self) -> dict[str, Any]: ...


@runtime_checkable
class TrainerInterface(Protocol):
    """What the local fine-tuning manager (brain/localtrain) offers the brain handle.

    Its dicts are validated into TrainingStatus by the handle (as UpdaterInterface's are).
    """

    def status(self) -> dict[str, Any]:
        """State, step, loss, ETA, resource level, last result: JSON-ready."""
        ...

    def start(self, options: dict[str, Any]) -> dict[str, Any]: ...

    def stop(self) -> dict[str, Any]: ...


@runtime_checkable
class BrainInterface(Protocol):
    """Every method returns a typed model (brain/interface_models.py), never a dict.

    The network side serialises them with ``.to_json()`` at the edge, so the JSON on the
    wire is the models' and a change to it is a type error, not a silent drift.
    """

    @property
    def robot_id(self) -> str: ...

    @property
    def action_names(self) -> tuple[str, ...]: ...

    def status(self) -> BrainStatus:
        """Mode, flags, e-stop reason, model, supervisor tasks: cheap."""
        ...

    def stats(self) -> BrainStats:
        """Control-loop timing, sensors, safety and policy counters."""
        ...

    def reset_stats(self) -> None:
        """Start the timing statistics afresh (e.g. after a warm-up)."""
        ...

    def set_mode(self, mode: str, reason: str = "") -> ModeChange: ...

    def estop(self, reason: str) -> ModeChange: ...

    def reset_estop(self) -> ModeChange: ...

    def start_recording(self, tags: list[str] | None = None) -> RecordingStatus:
        """Arm recording: episodes are written while the mode records (MANUAL, ...)."""
        ...

    def stop_recording(self) -> RecordingStatus:
        """Disarm recording; the open episode is committed."""
        ...

    def teleop(self, action: list[float]) -> None:
        """Latest joystick command; the safety watchdog stops the robot if these stop coming."""
        ...

    def heartbeat(self) -> DeadmanStatus:
        """An operator is watching: lets supervised autonomy drive (autonomous_heartbeat_s)."""
        ...

    def telemetry(self) -> Telemetry:
        """Small, frequent state for streaming: mode, last command, tick, model, sim pose."""
        ...

    def latest_frame(self) -> CameraFrame | None:
        """The newest camera frame (None without a camera or before the first frame)."""
        ...

    # -- episodes (rlds) ------------------------------------------------------------------

    def list_episodes(self) -> list[EpisodeSummary]: ...

    def delete_episode(self, episode_id: str) -> EpisodeDeleted:
        """Raises NotFound for an unknown id; refuses the episode being recorded."""
        ...

    async def export_episodes(self, options: dict[str, Any]) -> ExportSummary:
        """Export committed episodes (format, out dir, splits); returns the manifest summary."""
        ...

    # -- local training and updates (CommandError when the component is absent) -----------

    def training_status(self) -> TrainingStatus: ...

    def start_training(self, options: dict[str, Any]) -> TrainingStatus: ...

    def stop_training(self) -> TrainingStatus: ...

    def update_status(self) -> UpdateStatus: ...

    async def check_update(self) -> UpdateResult: ...

    async def install_update(self, archive: Path) -> UpdateResult: ...

    async def rollback_update(self) -> UpdateResult: ...


@dataclass(frozen=True, slots=True)
class Service:
    """A long-running network service the supervisor runs beside the brain."""

    name: str
    run: Callable[[], Awaitable[None]]


ServiceFactory = Callable[[BrainInterface, Config], Service | None]

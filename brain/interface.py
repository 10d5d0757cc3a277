"""The narrow interface the brain gives to the network side (edge_agent).

Commands in, state and telemetry out; nothing here hands out hardware, slots
or files.  Network services are discovered through the ``continuon.services``
entry-point group and receive a ``BrainInterface``; the brain never imports
them by name, so the dependency points one way only.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from brain.config import Config


class CommandError(ValueError):
    """A command was refused; the message says why (shown to the caller as-is)."""


@runtime_checkable
class BrainInterface(Protocol):
    @property
    def robot_id(self) -> str: ...

    @property
    def action_names(self) -> tuple[str, ...]: ...

    def status(self) -> dict[str, Any]:
        """Mode, flags, e-stop reason, model, supervisor tasks: cheap, JSON-ready."""
        ...

    def stats(self) -> dict[str, Any]:
        """Control-loop timing, sensors, safety and policy counters: JSON-ready."""
        ...

    def reset_stats(self) -> None:
        """Start the timing statistics afresh (e.g. after a warm-up)."""
        ...

    def set_mode(self, mode: str, reason: str = "") -> dict[str, Any]: ...

    def estop(self, reason: str) -> dict[str, Any]: ...

    def reset_estop(self) -> dict[str, Any]: ...

    def start_recording(self, tags: list[str] | None = None) -> dict[str, Any]:
        """Arm recording: episodes are written while the mode records (MANUAL, ...)."""
        ...

    def stop_recording(self) -> dict[str, Any]:
        """Disarm recording; the open episode is committed."""
        ...

    def teleop(self, action: list[float]) -> None:
        """Latest joystick command; the safety watchdog stops the robot if these stop coming."""
        ...


@dataclass(frozen=True, slots=True)
class Service:
    """A long-running network service the supervisor runs beside the brain."""

    name: str
    run: Callable[[], Awaitable[None]]


ServiceFactory = Callable[[BrainInterface, Config], Service | None]

"""Commands the cloud may send: check for an update, upload episodes, ping. Nothing else.

The cloud can never move the robot.  This is an allow-list, not a deny-list:
a command is run only if it is named in ``ALLOWED``; everything else is
refused, and a command that would move or arm the robot (mode, teleop, e-stop
reset, recording ...) is refused with a reason that says so and an event, so
whoever watches the fleet sees that someone tried.

A command is a JSON object ``{"id": "...", "cmd": "...", "args": {...}}``; the
reply is ``{"id": ..., "cmd": ..., "ok": true, "result": ...}`` or
``{"id": ..., "cmd": ..., "ok": false, "error": "..."}``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from brain.config import Config
from brain.interface import BrainInterface, CommandError

_log = logging.getLogger(__name__)

ALLOWED = ("ping", "check-update", "upload-episodes")

# Commands the local API knows that move, arm or change what the robot does.
MOTION = frozenset(
    {
        "mode",
        "set-mode",
        "set_mode",
        "teleop",
        "drive",
        "move",
        "estop",
        "e-stop",
        "reset",
        "reset-estop",
        "reset_estop",
        "record",
        "start-recording",
        "start_recording",
        "autonomous",
        "manual",
        "start-training",
        "install-update",
        "rollback",
    }
)

MAX_COMMAND_BYTES = 16 * 1024
EXPORT_OPTION_KEYS = ("format", "seed", "split")


@dataclass(frozen=True, slots=True)
class Command:
    id: str
    cmd: str
    args: dict[str, Any]


class BadCommand(ValueError):
    """A malformed command message (no reply id may be known)."""

    def __init__(self, message: str, command_id: str | None = None) -> None:
        super().__init__(message)
        self.command_id = command_id


def parse_command(payload: bytes) -> Command:
    if len(payload) > MAX_COMMAND_BYTES:
        raise BadCommand(f"command of {len(payload)} bytes exceeds {MAX_COMMAND_BYTES}")
    try:
        obj = json.loads(payload)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadCommand(f"command is not valid JSON: {exc}") from None
    except RecursionError:
        # 16 KiB of "[" is valid-looking JSON that the parser cannot descend into.
        raise BadCommand("command is nested too deeply to be a command") from None
    if not isinstance(obj, dict):
        raise BadCommand("a command is a JSON object")
    cid = obj.get("id")
    cid = cid if isinstance(cid, str) and 0 < len(cid) <= 128 else None
    if cid is None:
        raise BadCommand('a command needs a string "id" (1-128 characters)')
    cmd = obj.get("cmd")
    if not isinstance(cmd, str) or not cmd:
        raise BadCommand('a command needs a string "cmd"', cid)
    args = obj.get("args", {})
    if not isinstance(args, dict):
        raise BadCommand('"args" must be a JSON object', cid)
    return Command(cid, cmd, args)


Uploader = Callable[[str, str], Awaitable[dict[str, Any]]]
"""(export directory, upload name) -> upload report."""

EventSink = Callable[[dict[str, Any]], None]


class CommandHandler:
    """Runs allowed commands against the brain; remembers recent ids to ignore redeliveries."""

    def __init__(
        self,
        brain: BrainInterface,
        config: Config,
        *,
        emit: EventSink,
        uploader: Uploader | None = None,
    ) -> None:
        self.brain = brain
        self.config = config
        self.emit = emit
        self.uploader = uploader
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._upload_lock = asyncio.Lock()

    def seen_before(self, cid: str) -> bool:
        """QoS 1 may deliver a command twice; run each id once."""
        if cid in self._seen:
            return True
        self._seen[cid] = None
        while len(self._seen) > 256:
            self._seen.popitem(last=False)
        return False

    async def handle(self, command: Command) -> dict[str, Any]:
        base = {"id": command.id, "cmd": command.cmd}
        if command.cmd not in ALLOWED:
            if command.cmd.lower() in MOTION:
                reason = (
                    f"refused {command.cmd!r}: the cloud can never move or arm the robot; "
                    "use the Robot API on the LAN"
                )
            else:
                reason = f"unknown command {command.cmd!r}; allowed: {', '.join(ALLOWED)}"
            self.emit(
                {"type": "command-refused", "id": command.id, "cmd": command.cmd, "reason": reason}
            )
            _log.warning("cloud command %s (%s) %s", command.cmd, command.id, reason)
            return {**base, "ok": False, "error": reason}
        try:
            if command.cmd == "ping":
                result: Any = {"pong": True, "robot_id": self.brain.robot_id}
            elif command.cmd == "check-update":
                result = (await self.brain.check_update()).to_json()
                self.emit({"type": "update-check", "result": result})
            else:
                result = await self._upload_episodes(command)
        except CommandError as exc:
            return {**base, "ok": False, "error": str(exc)}
        except Exception as exc:  # a failing command is reported, never kills the link
            _log.exception("cloud command %s failed", command.cmd)
            self.emit({"type": "error", "where": f"cloud command {command.cmd}", "error": str(exc)})
            return {**base, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
        return {**base, "ok": True, "result": result}

    async def _upload_episodes(self, command: Command) -> dict[str, Any]:
        if self.uploader is None or not self.config.uploader.destination:
            raise CommandError("no upload destination is configured (uploader.destination)")
        unknown = set(command.args) - set(EXPORT_OPTION_KEYS)
        if unknown:
            raise CommandError(
                f"upload-episodes: unknown args {sorted(unknown)}; known: "
                f"{', '.join(EXPORT_OPTION_KEYS)}"
            )
        if self._upload_lock.locked():
            raise CommandError("an upload is already running")
        async with self._upload_lock:
            exported = (await self.brain.export_episodes(dict(command.args))).to_json()
            out_dir = str(exported["out_dir"])
            self.emit({"type": "upload-started", "id": command.id, "out_dir": out_dir})
            report = await self.uploader(out_dir, "")
            self.emit(
                {
                    "type": "upload-finished",
                    "id": command.id,
                    "ok": bool(report.get("ok")),
                    "name": report.get("name"),
                    "files": report.get("files"),
                    "bytes_sent": report.get("bytes_sent"),
                    "mismatched": report.get("mismatched"),
                }
            )
            return {"export": exported, "upload": report}

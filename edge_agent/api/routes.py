"""The REST routes of the Robot API and the table that describes every route.

``ROUTES`` is the single source for the router (app.py), the auth decision
(only ``PUBLIC`` routes skip the token) and the OpenAPI document (openapi.py),
so the three cannot drift apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from brain.config import Config
from brain.interface import BrainInterface, CommandError
from brain.interface_models import UpdateResult
from common.health import API_STATUS, HostReading, Level, Thresholds, assess, read_host
from edge_agent.api import streams
from edge_agent.api.keys import AUTH, BRAIN, CONFIG, TOKEN_ID, UPLOAD_LOCK
from edge_agent.api.models import (
    ApiError,
    Empty,
    EstopBody,
    ExportBody,
    ModeBody,
    PairBody,
    RecordingStartBody,
    TrainingStartBody,
    read_body,
)
from edge_agent.api.openapi import build_openapi

_log = logging.getLogger("continuon.api")

API_VERSION = "1"
WEBAPP_DIR = Path(__file__).resolve().parent.parent / "webapp"
EPISODE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class RouteSpec:
    method: str
    path: str  # aiohttp path; the canonical form ({name}) is what OpenAPI shows
    handler: Handler
    summary: str
    body: type[BaseModel] | None = None
    # json: JSON in/out; websocket; mjpeg; file: static file; upload: octet-stream body
    kind: str = "json"

    @property
    def canonical(self) -> str:
        return re.sub(r"\{(\w+):[^}]*\}", r"{\1}", self.path)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=_dumps)


def _dumps(obj: Any) -> str:
    import json

    return json.dumps(obj, default=str)


# ----------------------------------------------------------------------------- public


async def index(request: web.Request) -> web.StreamResponse:
    page = WEBAPP_DIR / "index.html"
    if not page.is_file():
        raise ApiError(404, "not_found", "the companion web app is not installed")
    return web.FileResponse(page, headers={"Cache-Control": "no-cache"})


async def static(request: web.Request) -> web.StreamResponse:
    rel = request.match_info["path"]
    root = WEBAPP_DIR.resolve()
    try:
        target = (root / rel).resolve()
        found = bool(rel) and root in target.parents and target.is_file()
    except (OSError, ValueError):  # NUL bytes, names too long, loops
        found = False
    if not found:
        raise ApiError(404, "not_found", f"no file {rel!r} in the web app")
    return web.FileResponse(target, headers={"Cache-Control": "no-cache"})


async def openapi_json(request: web.Request) -> web.Response:
    return _json(build_openapi(ROUTES, PUBLIC, API_VERSION))


def health_checks(config: Config, reading: HostReading | None = None) -> dict[str, dict[str, Any]]:
    """The host's checks, classified by ``common.health`` like hw-check and the training guard.

    ``reading``: a given sample (tests); None reads this machine.
    """
    r = reading if reading is not None else read_host(config.state_dir())
    a = assess(r, Thresholds.from_config(config.local_train))

    def status(name: str) -> str:
        check = a.checks.get(name)
        return "unknown" if check is None else API_STATUS[check.level]

    return {
        "cpu_temp": {"status": status("temperature"), "celsius": r.temperature_c},
        # No path: where the robot keeps its data is nobody's business on the LAN.
        "disk": {"status": status("disk"), "used_percent": r.disk.percent if r.disk else None},
        "memory": {"status": status("memory"), "used_percent": r.memory_percent},
        "cpu": {"status": "ok", "load_percent": r.cpu_percent, "load_1m": r.load_1m},
    }


async def health(request: web.Request) -> web.Response:
    brain = request.app[BRAIN]
    status = brain.status()
    checks = await asyncio.to_thread(health_checks, request.app[CONFIG])
    control = {"status": "ok" if status.control_running else "critical"}
    checks["control_loop"] = control
    bad = {API_STATUS[Level.CRITICAL], API_STATUS[Level.EMERGENCY]}
    return _json(
        {
            "ok": not any(c["status"] in bad for c in checks.values()),
            "mode": status.mode,
            "api_version": API_VERSION,
            "robot_id": brain.robot_id,
            "software_version": status.software_version,
            "checks": checks,
        }
    )


async def pair(request: web.Request) -> web.Response:
    from edge_agent.api.auth import PairingError

    body = await read_body(request, PairBody)
    client = request.remote or "unknown"
    try:
        token, rec = request.app[AUTH].pair(body.code, body.name.strip() or "owner", client)
    except PairingError as exc:
        headers = {"Retry-After": str(int(exc.retry_after + 0.999))} if exc.retry_after else None
        raise ApiError(exc.status, exc.code, str(exc), headers) from None
    return _json({"token": token, "token_id": rec.token_id, "name": rec.name})


# ----------------------------------------------------------------------------- owner


async def stream_ticket(request: web.Request) -> web.Response:
    await read_body(request, Empty)
    tickets = request.app[AUTH].tickets
    return _json({"ticket": tickets.issue(request[TOKEN_ID]), "expires_in_s": tickets.ttl_s})


async def status(request: web.Request) -> web.Response:
    return _json(request.app[BRAIN].status().to_json())


async def stats(request: web.Request) -> web.Response:
    return _json(request.app[BRAIN].stats().to_json())


async def set_mode(request: web.Request) -> web.Response:
    body = await read_body(request, ModeBody)
    return _json(request.app[BRAIN].set_mode(body.mode, body.reason).to_json())


async def estop(request: web.Request) -> web.Response:
    body = await read_body(request, EstopBody)
    return _json(request.app[BRAIN].estop(body.reason).to_json())


async def heartbeat(request: web.Request) -> web.Response:
    await read_body(request, Empty)
    return _json(request.app[BRAIN].heartbeat().to_json())


async def reset(request: web.Request) -> web.Response:
    await read_body(request, Empty)
    return _json(request.app[BRAIN].reset_estop().to_json())


async def list_episodes(request: web.Request) -> web.Response:
    rows = await asyncio.to_thread(request.app[BRAIN].list_episodes)
    return _json({"episodes": [row.to_json() for row in rows]})


async def recording_start(request: web.Request) -> web.Response:
    body = await read_body(request, RecordingStartBody)
    return _json(request.app[BRAIN].start_recording(body.tags).to_json())


async def recording_stop(request: web.Request) -> web.Response:
    await read_body(request, Empty)
    return _json(request.app[BRAIN].stop_recording().to_json())


async def delete_episode(request: web.Request) -> web.Response:
    episode_id = request.match_info["episode_id"]
    if not EPISODE_ID.match(episode_id):
        raise ApiError(404, "not_found", f"no episode {episode_id!r}")
    return _json(request.app[BRAIN].delete_episode(episode_id).to_json())


async def export_episodes(request: web.Request) -> web.Response:
    body = await read_body(request, ExportBody)
    exported = await request.app[BRAIN].export_episodes(body.model_dump(exclude_none=True))
    return _json(exported.to_json())


async def training(request: web.Request) -> web.Response:
    return _json(request.app[BRAIN].training_status().to_json())


async def training_start(request: web.Request) -> web.Response:
    body = await read_body(request, TrainingStartBody)
    # Only the fields the client sent: the trainer fills the rest from the config.  On a
    # thread: the start check hashes the base weights and scans the episodes.
    opts = body.model_dump(exclude_unset=True)
    started = await asyncio.to_thread(request.app[BRAIN].start_training, opts)
    return _json(started.to_json())


async def training_stop(request: web.Request) -> web.Response:
    await read_body(request, Empty)
    return _json(request.app[BRAIN].stop_training().to_json())


async def updates(request: web.Request) -> web.Response:
    return _json(request.app[BRAIN].update_status().to_json())


async def _updater_call(call: Awaitable[UpdateResult], status: int, code: str) -> web.Response:
    """The updater refuses with its own exceptions (trust, busy, slot); say why, never 500."""
    try:
        return _json((await call).to_json())
    except (CommandError, ApiError):
        raise
    except Exception as exc:
        _log.warning("update operation failed: %s: %s", type(exc).__name__, exc)
        raise ApiError(status, code, f"{type(exc).__name__}: {exc}") from None


async def updates_check(request: web.Request) -> web.Response:
    await read_body(request, Empty)
    return await _updater_call(request.app[BRAIN].check_update(), 409, "update_failed")


async def updates_rollback(request: web.Request) -> web.Response:
    await read_body(request, Empty)
    return await _updater_call(request.app[BRAIN].rollback_update(), 409, "rollback_failed")


UPLOAD_CHUNK = 256 * 1024


async def updates_upload(request: web.Request) -> web.Response:
    """Streams the bundle to <state_dir>/edge/uploads (never into memory), then installs it."""
    config: Config = request.app[CONFIG]
    limit = config.api.max_upload_bytes
    if request.content_type != "application/octet-stream":
        raise ApiError(
            415,
            "unsupported_media_type",
            f"send the bundle archive as application/octet-stream, not {request.content_type}",
        )
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "too_large", f"the bundle is larger than api.max_upload_bytes {limit}")
    lock = request.app[UPLOAD_LOCK]
    if lock.locked():
        raise ApiError(409, "busy", "another update upload is in progress")
    # One upload at a time, so a client that stops sending must not keep the lock: the
    # body has to keep arriving (api.upload_idle_timeout_s) and end in api.upload_timeout_s.
    async with lock:
        folder = config.state_dir() / "edge" / "uploads"
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        need = request.content_length or 0
        free = shutil.disk_usage(folder).free
        if need and need > free:
            raise ApiError(413, "too_large", f"not enough disk space for {need} bytes")
        fd, name = tempfile.mkstemp(dir=folder, prefix="bundle-", suffix=".tar")
        path = Path(name)
        try:
            with os.fdopen(fd, "wb") as f:
                total = 0
                async for chunk in _body_chunks(request, config):
                    total += len(chunk)
                    if total > limit:
                        msg = f"the bundle is larger than api.max_upload_bytes {limit}"
                        raise ApiError(413, "too_large", msg)
                    await asyncio.to_thread(f.write, chunk)
            if total == 0:
                raise ApiError(400, "empty_body", "the body is empty; send the bundle archive")
            return await _updater_call(
                request.app[BRAIN].install_update(path), 422, "bundle_rejected"
            )
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


async def _body_chunks(request: web.Request, config: Config) -> AsyncIterator[bytes]:
    """The request body in chunks; 408 when it stalls or takes too long in all."""
    loop = asyncio.get_running_loop()
    idle, total = config.api.upload_idle_timeout_s, config.api.upload_timeout_s
    deadline = loop.time() + total
    while True:
        left = deadline - loop.time()
        try:
            if left <= 0:
                raise TimeoutError
            chunk = await asyncio.wait_for(request.content.readany(), min(idle, left))
        except TimeoutError:
            why = (
                f"no data for api.upload_idle_timeout_s {idle:g} s"
                if left > idle
                else f"not complete within api.upload_timeout_s {total:g} s"
            )
            raise ApiError(408, "upload_timeout", f"upload abandoned: {why}") from None
        if not chunk:
            return
        yield chunk


# ----------------------------------------------------------------------------- the table

ROUTES: tuple[RouteSpec, ...] = (
    RouteSpec("GET", "/", index, "The companion web app", kind="file"),
    RouteSpec("GET", "/static/{path:.+}", static, "Files of the companion web app", kind="file"),
    RouteSpec("GET", "/openapi.json", openapi_json, "This document"),
    RouteSpec("GET", "/api/v1/health", health, "Health checks, mode and API version"),
    RouteSpec("POST", "/api/v1/pair", pair, "Exchange a pairing code for an owner token", PairBody),
    RouteSpec(
        "POST", "/api/v1/stream-ticket", stream_ticket, "A short-lived ticket for ?ticket=", Empty
    ),
    RouteSpec("GET", "/api/v1/status", status, "Mode, flags, e-stop reason, model, tasks"),
    RouteSpec("GET", "/api/v1/stats", stats, "Control-loop timing, sensors, safety counters"),
    RouteSpec("POST", "/api/v1/mode", set_mode, "Change mode", ModeBody),
    RouteSpec("POST", "/api/v1/estop", estop, "Latch the e-stop", EstopBody),
    RouteSpec("POST", "/api/v1/reset", reset, "Reset a latched e-stop (back to idle)", Empty),
    RouteSpec(
        "POST", "/api/v1/heartbeat", heartbeat, "Operator heartbeat (supervised autonomy)", Empty
    ),
    RouteSpec("GET", "/api/v1/teleop", streams.teleop_ws, "Teleop WebSocket", kind="websocket"),
    RouteSpec("GET", "/api/v1/camera.mjpg", streams.camera_mjpeg, "Camera as MJPEG", kind="mjpeg"),
    RouteSpec(
        "GET", "/api/v1/camera", streams.camera_ws, "Camera as WebSocket JPEG", kind="websocket"
    ),
    RouteSpec("GET", "/api/v1/episodes", list_episodes, "Recorded episodes"),
    RouteSpec(
        "POST", "/api/v1/recording/start", recording_start, "Arm recording", RecordingStartBody
    ),
    RouteSpec("POST", "/api/v1/recording/stop", recording_stop, "Disarm recording", Empty),
    RouteSpec("DELETE", "/api/v1/episodes/{episode_id}", delete_episode, "Delete an episode"),
    RouteSpec("POST", "/api/v1/episodes/export", export_episodes, "Export episodes", ExportBody),
    RouteSpec("GET", "/api/v1/training", training, "Local fine-tuning progress"),
    RouteSpec(
        "POST", "/api/v1/training/start", training_start, "Start fine-tuning", TrainingStartBody
    ),
    RouteSpec("POST", "/api/v1/training/stop", training_stop, "Stop fine-tuning", Empty),
    RouteSpec("GET", "/api/v1/updates", updates, "Update status"),
    RouteSpec("POST", "/api/v1/updates/check", updates_check, "Check for an update", Empty),
    RouteSpec(
        "POST",
        "/api/v1/updates/upload",
        updates_upload,
        "Install a side-loaded bundle (application/octet-stream body)",
        kind="upload",
    ),
    RouteSpec(
        "POST", "/api/v1/updates/rollback", updates_rollback, "Roll back the last update", Empty
    ),
)

# The only routes that need no owner token.  Everything else, including routes added
# later, is refused without one (default deny in app.auth_middleware).
PUBLIC: frozenset[tuple[str, str]] = frozenset(
    {
        ("GET", "/"),
        ("GET", "/static/{path}"),
        ("GET", "/openapi.json"),
        ("GET", "/api/v1/health"),
        ("POST", "/api/v1/pair"),
    }
)

SPECS: dict[tuple[str, str], RouteSpec] = {(r.method, r.canonical): r for r in ROUTES}


def brain_of(request: web.Request) -> BrainInterface:
    return request.app[BRAIN]

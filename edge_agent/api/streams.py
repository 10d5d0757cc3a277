"""The streaming routes: teleop WebSocket, camera as MJPEG and as WebSocket JPEG.

Teleop commands go straight to ``brain.teleop`` from the socket's reader: the
brain latches the latest command and its watchdog stops the robot when they
stop coming, so a dropped socket needs no cleanup here to be safe.

Camera frames are JPEG-encoded once per new frame (by ``seq``) in a worker
thread and shared by every viewer; each viewer is capped at
``api.camera_max_fps`` and a slow viewer simply skips frames (its writes wait
on the socket), so no client can make the robot buffer images.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
from aiohttp import WSMsgType, web
from pydantic import BaseModel

from brain.interface import BrainInterface, CommandError
from edge_agent.api.keys import (
    AUTH,
    BRAIN,
    CLOSING,
    CONFIG,
    ENCODER,
    TOKEN_ID,
    WEBSOCKETS,
    WS_BUDGETS,
)
from edge_agent.api.models import EstopMsg, PingMsg, TeleopMsg, decode_json, parse_model

_log = logging.getLogger("continuon.api.streams")

SUBPROTOCOL = "continuon.v1"
WS_MAX_MSG = 4096
CLOSE_REVOKED = 4401  # application close code: the token was revoked


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(
        ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


class FrameEncoder:
    """The latest camera frame as JPEG, encoded at most once per frame for all viewers."""

    def __init__(self, brain: BrainInterface, quality: int) -> None:
        self._brain = brain
        self._quality = quality
        self._lock = asyncio.Lock()
        self._seq: int | None = None
        self._jpeg = b""
        self.encoded = 0

    async def latest(self) -> tuple[int, bytes] | None:
        async with self._lock:
            frame = self._brain.latest_frame()
            if frame is None:
                return None
            if frame.seq != self._seq:
                self._jpeg = await asyncio.to_thread(encode_jpeg, frame.rgb, self._quality)
                self._seq = frame.seq
                self.encoded += 1
            return frame.seq, self._jpeg


async def _paced_frames(encoder: FrameEncoder, auth: Any, token_id: str, fps: float) -> Any:
    """Yields new JPEG frames at most ``fps`` per second while the token stays live."""
    loop = asyncio.get_running_loop()
    period = 1.0 / fps
    last_seq: int | None = None
    next_t = loop.time()
    while auth.tokens.is_live(token_id):
        got = await encoder.latest()
        if got is not None and got[0] != last_seq:
            last_seq = got[0]
            yield got[1]
        next_t += period
        delay = next_t - loop.time()
        if delay < 0:  # we fell behind (slow client): do not try to catch up
            next_t = loop.time()
            delay = 0
        await asyncio.sleep(delay)


def _prepare_ws(request: web.Request, heartbeat: float | None) -> web.WebSocketResponse:
    return web.WebSocketResponse(
        protocols=(SUBPROTOCOL,), max_msg_size=WS_MAX_MSG, heartbeat=heartbeat
    )


class MessageBudget:
    """A token bucket for one client's WebSocket messages, and the flood test.

    Parsing and validating a teleop message costs the event loop that also
    answers /health and the e-stop route; a client sending tens of thousands
    per second would delay them all.  ``rate`` messages per second (a burst of
    one second) are handled; beyond that the reader only keeps the latest one,
    and a client that sends more than ``FLOOD_FACTOR`` x ``rate`` in a second is
    misbehaving and gets disconnected.
    """

    FLOOD_FACTOR = 4.0
    PENALTY_S = 5.0  # after a flood, new sockets from that client are refused this long

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self._clock = clock
        self._tokens = rate
        self._last = clock()
        self._window_start = self._last
        self._window_count = 0
        self.dropped = 0
        self.blocked_until = 0.0

    def idle_s(self) -> float:
        return self._clock() - self._last

    def penalize(self) -> None:
        self.blocked_until = self._clock() + self.PENALTY_S

    def blocked_for(self) -> float:
        return max(0.0, self.blocked_until - self._clock())

    def take(self) -> bool:
        """True if one more message may be handled now (and counts it)."""
        now = self._clock()
        self._tokens = min(self.rate, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if now - self._window_start >= 1.0:
            self._window_start, self._window_count = now, 0
        self._window_count += 1
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        self.dropped += 1
        return False

    def flooding(self) -> bool:
        return self._window_count > self.FLOOD_FACTOR * self.rate

    def wait_s(self) -> float:
        """Until the next message may be handled."""
        return max(0.0, (1.0 - self._tokens) / self.rate)


CLOSE_POLICY = 1008  # RFC 6455 policy violation: the client sent far too many messages


class Budgets:
    """One MessageBudget per client address (IPv6: per /64), shared by all its sockets.

    Per address rather than per socket: otherwise a client would get a fresh burst
    with every reconnect (measured: 256 reconnects in 5 s, ~10,000 messages/s handled).
    """

    MAX_CLIENTS = 1000

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._by_client: dict[str, MessageBudget] = {}

    def for_request(self, request: web.Request) -> MessageBudget:
        from edge_agent.api.auth import client_key

        key = client_key(request.remote or "unknown")
        budget = self._by_client.get(key)
        if budget is None:
            if len(self._by_client) >= self.MAX_CLIENTS:
                self._by_client = {
                    k: b
                    for k, b in self._by_client.items()
                    if b.idle_s() < 60 or b.blocked_for() > 0
                }
            budget = self._by_client[key] = MessageBudget(self.rate)
        if budget.blocked_for() > 0:
            from edge_agent.api.models import ApiError

            raise ApiError(
                429,
                "rate_limited",
                "this client flooded a WebSocket; wait before reconnecting",
                {"Retry-After": str(int(budget.blocked_for() + 0.999))},
            )
        return budget


async def teleop_ws(request: web.Request) -> web.WebSocketResponse:
    """Joystick in (JSON up to 50 Hz), telemetry out (~telemetry_hz)."""
    brain = request.app[BRAIN]
    auth = request.app[AUTH]
    token_id: str = request[TOKEN_ID]
    hz = request.app[CONFIG].api.telemetry_hz
    budget = request.app[WS_BUDGETS].for_request(request)  # 429 while penalized
    ws = _prepare_ws(request, heartbeat=2.0)
    await ws.prepare(request)
    request.app[WEBSOCKETS].add(ws)
    pending: str | None = None  # the latest message over budget: handled when budget is back

    async def telemetry() -> None:
        while not ws.closed:
            if not auth.tokens.is_live(token_id):
                await ws.close(code=CLOSE_REVOKED, message=b"token revoked")
                return
            await ws.send_json({"type": "telemetry", **brain.telemetry().to_json()}, dumps=_dumps)
            await asyncio.sleep(1.0 / hz)

    async def handle(text: str) -> None:
        reply = _handle_teleop_message(brain, text)
        if reply is not None:
            await ws.send_json(reply, dumps=_dumps)

    async def flush_pending() -> None:
        """The last command of a burst must not be lost (it may be the stop)."""
        nonlocal pending
        while pending is not None and not ws.closed:
            await asyncio.sleep(budget.wait_s())
            if pending is not None and budget.take():
                text, pending = pending, None
                await handle(text)

    sender = asyncio.create_task(telemetry())
    flusher: asyncio.Task[None] | None = None
    try:
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                allowed = budget.take()
                if allowed or "estop" in msg.data:  # an e-stop is never held back
                    pending = None  # a later message supersedes a held one
                    await handle(msg.data)
                if allowed:
                    continue
                if budget.flooding():
                    _log.warning(
                        "teleop client %s sent over %.0f messages/s; disconnected",
                        request.remote,
                        budget.FLOOD_FACTOR * budget.rate,
                    )
                    budget.penalize()
                    await ws.close(code=CLOSE_POLICY, message=b"too many messages")
                    break
                if "estop" not in msg.data:
                    pending = msg.data
                    if flusher is None or flusher.done():
                        flusher = asyncio.create_task(flush_pending())
            elif msg.type == WSMsgType.BINARY:
                await ws.send_json(_ws_error("bad_message", "send JSON text messages"))
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        for task in (sender, flusher):
            if task is None:
                continue
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, RuntimeError):
                await task
        # Nothing to stop here: without new commands the brain's watchdog returns to neutral.
    return ws


_MESSAGES: dict[str, type[BaseModel]] = {"teleop": TeleopMsg, "estop": EstopMsg, "ping": PingMsg}


def _handle_teleop_message(brain: BrainInterface, text: str) -> dict[str, Any] | None:
    """One client message; returns what to answer (None: nothing)."""
    from edge_agent.api.models import ApiError

    try:
        data = decode_json(text)
        kind = data.get("type") if isinstance(data, dict) else None
        model = _MESSAGES.get(kind) if isinstance(kind, str) else None
        if model is None:
            return _ws_error("bad_message", 'messages need "type": "teleop", "estop" or "ping"')
        msg = parse_model(model, data)
        if isinstance(msg, TeleopMsg):
            brain.teleop(msg.action)
            return None
        if isinstance(msg, EstopMsg):
            return {"type": "estop", **brain.estop(msg.reason).to_json()}
        return {"type": "pong"}
    except ApiError as exc:
        return _ws_error(exc.code, exc.message)
    except CommandError as exc:
        return _ws_error("refused", str(exc))


def _ws_error(code: str, message: str) -> dict[str, Any]:
    from edge_agent.api.redact import redact_paths

    return {"type": "error", "error": {"code": code, "message": redact_paths(message)}}


def _dumps(obj: Any) -> str:
    import json

    return json.dumps(obj, default=str)


async def camera_ws(request: web.Request) -> web.WebSocketResponse:
    """Binary messages, one JPEG each; client messages are ignored."""
    app = request.app
    budget = app[WS_BUDGETS].for_request(request)
    ws = _prepare_ws(request, heartbeat=5.0)
    await ws.prepare(request)
    app[WEBSOCKETS].add(ws)

    async def drain_incoming() -> None:
        async for _ in ws:  # answers pings, notices the close
            if not budget.take() and budget.flooding():
                budget.penalize()
                await ws.close(code=CLOSE_POLICY, message=b"too many messages")

    reader = asyncio.create_task(drain_incoming())
    try:
        async for jpeg in _paced_frames(app[ENCODER], app[AUTH], request[TOKEN_ID], _fps(app)):
            if ws.closed:
                break
            await ws.send_bytes(jpeg)
        if not ws.closed:
            await ws.close(code=CLOSE_REVOKED, message=b"token revoked")
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError, RuntimeError):
            await reader
    return ws


BOUNDARY = "continuonframe"


async def camera_mjpeg(request: web.Request) -> web.StreamResponse:
    """multipart/x-mixed-replace, for an <img src="...?ticket=">."""
    app = request.app
    resp = web.StreamResponse(
        headers={
            "Content-Type": f"multipart/x-mixed-replace; boundary={BOUNDARY}",
            "Cache-Control": "no-store",
        }
    )
    await resp.prepare(request)
    try:
        async for jpeg in _paced_frames(app[ENCODER], app[AUTH], request[TOKEN_ID], _fps(app)):
            if app[CLOSING].is_set():
                break
            head = (
                f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
            ).encode()
            await resp.write(head + jpeg + b"\r\n")
    except (ConnectionError, asyncio.CancelledError):
        pass
    return resp


def _fps(app: web.Application) -> float:
    return float(app[CONFIG].api.camera_max_fps)

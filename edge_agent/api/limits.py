"""Connection limits for the Robot API: caps, a header deadline and quiet refusals.

aiohttp serves every connection it is handed for as long as the peer keeps it
open and has no cap on how many there are; an idle TCP connection costs the
daemon one file descriptor.  A few hundred of them from the LAN used to exhaust
the descriptors of the whole process (the e-stop and the control socket with
them) and asyncio then logged every failed accept() with a traceback.

``ConnectionGate`` wraps aiohttp's protocol factory (``runner.server``) and
decides in ``connection_made``, before aiohttp sees the connection:

* at most ``max_connections_per_client`` per client address: a newcomer over
  it is reset at once (its descriptor is freed in the same call);
* at most ``max_connections`` in total: when full, the oldest connection that
  has not yet sent a complete request head is reset to make room (idle
  connections cannot starve the owner), and if every connection is busy the
  newcomer is reset;
* the first request's head must arrive within ``header_timeout_s`` (slowloris
  and plain idle sockets); later idle time is aiohttp's ``keepalive_timeout``.

Refusals are logged at most a few times per interval with a count of the rest.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from aiohttp import web

from brain.config import ApiConfig
from brain.logs import LogRateLimiter, log_fields

_log = logging.getLogger("continuon.api")

HEAD_END = b"\r\n\r\n"
MAX_HEAD_SCAN = 64 * 1024  # past aiohttp's own header limits; the parser refuses first


class ConnectionGate:
    """Counts the API's open connections and admits, evicts or refuses."""

    def __init__(
        self,
        max_total: int,
        max_per_client: int,
        header_timeout_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        log_limiter: LogRateLimiter | None = None,
    ) -> None:
        self.max_total = max_total
        self.max_per_client = max_per_client
        self.header_timeout_s = header_timeout_s
        self._clock = clock
        self._open: dict[GuardedProtocol, str] = {}  # insertion order = age
        self._per_client: Counter[str] = Counter()
        self._limiter = log_limiter or LogRateLimiter(interval_s=10.0, burst=3, clock=clock)
        self.refused: Counter[str] = Counter()

    @classmethod
    def from_config(cls, api: ApiConfig) -> ConnectionGate:
        return cls(api.max_connections, api.max_connections_per_client, api.header_timeout_s)

    def wrap(self, factory: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        return lambda: GuardedProtocol(self, factory)

    @property
    def open_connections(self) -> int:
        return len(self._open)

    def stats(self) -> dict[str, Any]:
        return {
            "open": len(self._open),
            "clients": len(self._per_client),
            "refused": dict(self.refused),
        }

    # ------------------------------------------------------------------ decisions

    def admit(self, conn: GuardedProtocol, client: str) -> bool:
        if self._per_client[client] >= self.max_per_client:
            self._refuse("per_client", client)
            return False
        if len(self._open) >= self.max_total and not self._evict_idle():
            self._refuse("total", client)
            return False
        self._open[conn] = client
        self._per_client[client] += 1
        return True

    def release(self, conn: GuardedProtocol) -> None:
        client = self._open.pop(conn, None)
        if client is None:
            return
        self._per_client[client] -= 1
        if self._per_client[client] <= 0:
            del self._per_client[client]

    def _evict_idle(self) -> bool:
        for conn in self._open:  # oldest first
            if not conn.head_seen:
                self.refused["evicted_idle"] += 1
                self.note(
                    "evicted_idle",
                    "connection cap reached: closed an idle connection from %s",
                    self._open[conn],
                )
                conn.abort()
                self.release(conn)
                return True
        return False

    def _refuse(self, why: str, client: str) -> None:
        self.refused[why] += 1
        self.note(f"refused:{why}", "connection from %s refused: %s cap reached", client, why)

    def note(self, key: str, msg: str, *args: Any) -> None:
        ok, dropped = self._limiter.allow(key)
        if ok:
            if dropped:
                msg += f" ({dropped} more like this since the last report)"
            _log.warning(msg, *args, extra=log_fields(open=len(self._open), suppressed=dropped))


class GuardedProtocol(asyncio.Protocol):
    """Stands in front of aiohttp's protocol for one connection; forwards everything."""

    def __init__(self, gate: ConnectionGate, factory: Callable[[], asyncio.Protocol]) -> None:
        self._gate = gate
        self._factory = factory
        self._inner: asyncio.Protocol | None = None
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._tail = b""
        self._scanned = 0
        self.head_seen = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        client = str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"
        if not self._gate.admit(self, client):
            transport.abort()  # RST now: the descriptor is free before we return
            return
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._gate.header_timeout_s, self._head_timeout, client)
        self._inner = self._factory()
        self._inner.connection_made(transport)

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _head_timeout(self, client: str) -> None:
        self._timer = None
        if not self.head_seen:
            self._gate.refused["header_timeout"] += 1
            self._gate.note(
                "header_timeout", "connection from %s closed: no request head in time", client
            )
            self.abort()

    def _watch_head(self, data: bytes) -> None:
        buf = self._tail + data
        self._scanned += len(data)
        if HEAD_END in buf or self._scanned > MAX_HEAD_SCAN:
            self.head_seen = True  # an oversized head is aiohttp's to refuse (431/400)
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        else:
            self._tail = buf[-(len(HEAD_END) - 1) :]

    def data_received(self, data: bytes) -> None:
        if self._inner is None:
            return
        if not self.head_seen:
            self._watch_head(data)
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._gate.release(self)
        if self._inner is not None:
            self._inner.connection_lost(exc)


class GatedTCPSite(web.BaseSite):
    """aiohttp's TCPSite, with every connection passing through a ``ConnectionGate``."""

    __slots__ = ("_gate", "_host", "_port", "_reuse_address", "bound_port")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        gate: ConnectionGate,
        *,
        backlog: int = 128,
        reuse_address: bool = True,
        shutdown_timeout: float = 60.0,
    ) -> None:
        super().__init__(runner, shutdown_timeout=shutdown_timeout, backlog=backlog)
        self._host = host
        self._port = port
        self._gate = gate
        self._reuse_address = reuse_address
        self.bound_port = port

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self.bound_port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._gate.wrap(server),
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
        )
        if self._server.sockets:
            self.bound_port = self._server.sockets[0].getsockname()[1]

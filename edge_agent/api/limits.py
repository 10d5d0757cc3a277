"""Connection limits for the Robot API: caps, a header deadline and quiet refusals.

aiohttp serves every connection it is handed for as long as the peer keeps it
open and has no cap on how many there are; an idle TCP connection costs the
daemon one file descriptor.  A few hundred of them from the LAN used to exhaust
the descriptors of the whole process (the e-stop and the control socket with
them) and asyncio then logged every failed accept() with a traceback.

``GatedTCPSite`` runs its own accept loop (asyncio's accepts up to the whole
backlog per wake-up and holds every accepted descriptor until a task has run,
which alone can exhaust a small descriptor table) and asks ``ConnectionGate``
about each new connection before any transport exists; a refused socket is
closed at once, in the same call.  At most ``ACCEPT_BATCH`` connections are
accepted per wake-up, and accept() out of descriptors (EMFILE and friends)
pauses accepting with a growing back-off instead of retrying in a loop.  The
gate decides:

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
import errno
import logging
import socket
import ssl
import struct
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from aiohttp import web

from brain.config import ApiConfig
from brain.logs import LogRateLimiter, log_fields
from common.backoff import Backoff, BackoffPolicy

_log = logging.getLogger("continuon.api")

ACCEPT_BATCH = 16
# First pause after accept() ran out of resources (doubling while it keeps failing), the most.
ACCEPT_BACKOFF = BackoffPolicy(initial_s=0.05, max_s=2.0)
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
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

    def __init__(
        self, gate: ConnectionGate, factory: Callable[[], asyncio.Protocol], client: str
    ) -> None:
        self._gate = gate
        self._factory = factory
        self.client = client
        self.evicted = False
        self._inner: asyncio.Protocol | None = None
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._tail = b""
        self._scanned = 0
        self.head_seen = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        if self.evicted:  # made room for a newer one before its transport existed
            transport.abort()
            return
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._gate.header_timeout_s, self._head_timeout, self.client)
        self._inner = self._factory()
        self._inner.connection_made(transport)

    def abort(self) -> None:
        self.evicted = True
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
    """aiohttp's TCPSite with an accept loop that asks a ``ConnectionGate`` first."""

    __slots__ = ("_gate", "_host", "_listener", "_port", "bound_port")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        gate: ConnectionGate,
        *,
        backlog: int = 128,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(runner, backlog=backlog, ssl_context=ssl_context)
        self._host = host
        self._port = port
        self._gate = gate
        self._listener: _Listener | None = None
        self.bound_port = port

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context is not None else "http"
        return f"{scheme}://{self._host}:{self.bound_port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.create_server((self._host, self._port), family=family, backlog=self._backlog)
        self._listener = _Listener(sock, self._gate, server, self._ssl_context)
        self._server = self._listener  # type: ignore[assignment]  # close() and sockets
        self.bound_port = sock.getsockname()[1]


class _Listener:
    """The listening socket and its accept loop; quacks like asyncio.Server for aiohttp."""

    def __init__(
        self,
        sock: socket.socket,
        gate: ConnectionGate,
        factory: Callable[[], asyncio.Protocol],
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._ssl = ssl_context
        self._gate = gate
        self._factory = factory
        self._loop = asyncio.get_running_loop()
        self._backoff = Backoff(ACCEPT_BACKOFF)
        self._resume: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop.add_reader(sock.fileno(), self._accept)

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return () if self._sock.fileno() < 0 else (self._sock,)

    def close(self) -> None:
        if self._resume is not None:
            self._resume.cancel()
        if self._sock.fileno() >= 0:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, addr = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _RESOURCE_ERRNOS:
                    self._pause(exc)
                    return
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue  # the client gave up before we got to it
                raise
            self._backoff.reset()
            client = str(addr[0]) if isinstance(addr, tuple) and addr else "unknown"
            proto = GuardedProtocol(self._gate, self._factory, client)
            if not self._gate.admit(proto, client):
                _reset(conn)  # the descriptor is free before the next accept()
                continue
            task = self._loop.create_task(self._connect(conn, proto))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _connect(self, conn: socket.socket, proto: GuardedProtocol) -> None:
        try:
            await self._loop.connect_accepted_socket(
                lambda: proto,
                sock=conn,
                ssl=self._ssl,
                # a TLS handshake that stalls is held to the same deadline as a request head
                ssl_handshake_timeout=self._gate.header_timeout_s if self._ssl else None,
            )
        except Exception:
            self._gate.release(proto)
            conn.close()

    def _pause(self, exc: OSError) -> None:
        """Out of descriptors (or memory): stop accepting for a while instead of spinning."""
        delay = self._backoff.next_delay()
        self._gate.note(
            f"accept:{exc.errno}",
            "accept() failed (%s); not accepting for %.2f s",
            exc.strerror,
            delay,
        )
        self._loop.remove_reader(self._sock.fileno())
        self._resume = self._loop.call_later(delay, self._resume_accepting)

    def _resume_accepting(self) -> None:
        self._resume = None
        if self._sock.fileno() >= 0:
            self._loop.add_reader(self._sock.fileno(), self._accept)


def _reset(conn: socket.socket) -> None:
    """Close with RST (SO_LINGER 0): no FIN_WAIT state kept for a refused client."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()

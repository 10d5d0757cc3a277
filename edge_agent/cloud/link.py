"""The MQTT link to the cloud (aiomqtt): retained status with a last will, telemetry,
events from an on-disk queue, and a few commands that can never move the robot.

Topics, under ``<topic_prefix>/<robot_id>/``:

``status``     retained JSON ``{"online": true, "mode": ..., ...}``; the last will (and a
               clean stop) leaves ``{"online": false}`` retained, so the fleet view is right
               even after a power cut.
``telemetry``  periodic JSON, QoS 0, not retained.
``events``     JSON ``{"seq": n, "t": ..., "type": ..., ...}``, QoS 1, in order, from the
               disk queue: raised while offline, delivered after the reconnect.
``cmd``        subscribed: ``ping``, ``check-update``, ``upload-episodes`` (commands.py).
``cmd/reply``  the reply to each command, carrying its id.

The watcher that turns brain status changes into events runs whether or not
the broker is reachable; the connection loop reconnects with exponential
backoff and jitter, capped at ``backoff_max_s``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import random
import ssl
import stat
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from brain.config import Config
from brain.interface import BrainInterface, Service
from brain.interface_models import BrainStatus
from common.backoff import Backoff, BackoffPolicy
from edge_agent.cloud.commands import (
    MAX_COMMAND_BYTES,
    BadCommand,
    CommandHandler,
    parse_command,
)
from edge_agent.cloud.queue import EventQueue

_log = logging.getLogger(__name__)

PUBLISH_TIMEOUT_S = 10.0
# MQTT 5 Maximum Packet Size sent in CONNECT: the broker never sends this client a larger
# packet, so a huge payload is not even read into memory.  A command (<= 16 KiB) plus its
# topic, header and properties fits.
MAX_INCOMING_PACKET = MAX_COMMAND_BYTES + 2048
# A connection that stayed up this long resets the backoff to its initial delay.
STABLE_AFTER_S = 30.0


class CloudConfigError(ValueError):
    """The cloud section points at something unusable (a missing CA file, say)."""


def topics(config: Config, robot_id: str) -> dict[str, str]:
    base = f"{config.cloud.topic_prefix}/{robot_id}"
    return {
        "status": f"{base}/status",
        "telemetry": f"{base}/telemetry",
        "events": f"{base}/events",
        "cmd": f"{base}/cmd",
        "reply": f"{base}/cmd/reply",
    }


def read_password(path: Path) -> str:
    try:
        st = path.stat()
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CloudConfigError(f"cloud.password_file {path}: {exc.strerror}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        _log.warning("cloud.password_file %s is readable by others; chmod 600 it", path)
    pw = text.rstrip("\r\n")
    if not pw:
        raise CloudConfigError(f"cloud.password_file {path} is empty")
    return pw


def tls_context(config: Config) -> ssl.SSLContext | None:
    c = config.cloud
    if not c.tls:
        return None
    try:
        ctx = ssl.create_default_context(cafile=str(c.ca_file) if c.ca_file else None)
        if c.cert_file is not None and c.key_file is not None:
            ctx.load_cert_chain(str(c.cert_file), str(c.key_file))
    except (OSError, ssl.SSLError) as exc:
        raise CloudConfigError(f"cloud TLS files unusable: {exc}") from None
    return ctx


def describe_error(exc: BaseException) -> str:
    """A line for the log and for status that says what to fix."""
    text = str(exc)
    rc = getattr(exc, "rc", None)
    low = text.lower()
    if "not authori" in low or "bad user name or password" in low or rc in (4, 5, 134, 135):
        return f"the broker refused the credentials (check cloud.username/password_file): {text}"
    if isinstance(exc, ssl.SSLCertVerificationError) or "certificate" in low:
        return f"TLS certificate problem (check cloud.ca_file / cert_file): {text}"
    if isinstance(exc, ConnectionRefusedError) or "refused" in low:
        return f"connection refused: {text}"
    return f"{type(exc).__name__}: {text}"


_UPDATE_KEYS = ("state", "phase", "available", "version", "current", "pending", "error")


class StatusWatcher:
    """Turns changes in brain.status() / update_status() into events."""

    def __init__(self, brain: BrainInterface) -> None:
        self.brain = brain
        self._prev: BrainStatus | None = None
        self._prev_update: Any = None
        self._restarts: dict[str, int] = {}
        self._failing = False

    def poll(self) -> tuple[list[dict[str, Any]], bool]:
        """(events, status changed)."""
        try:
            st = self.brain.status()
            upd = self.brain.update_status()
        except Exception as exc:
            if self._failing:
                return [], False
            self._failing = True
            return [{"type": "error", "where": "brain status", "error": str(exc)}], False
        self._failing = False
        events: list[dict[str, Any]] = []
        prev = self._prev
        if prev is not None:
            if st.mode != prev.mode:
                events.append({"type": "mode", "from": prev.mode, "to": st.mode})
            if st.estop_reason and st.estop_reason != prev.estop_reason:
                events.append({"type": "estop", "reason": st.estop_reason})
            if st.model_version != prev.model_version:
                events.append({"type": "model", "from": prev.model_version, "to": st.model_version})
        for name, task in st.tasks.items():
            restarts = task.restarts
            if restarts > self._restarts.get(name, 0 if prev is not None else restarts):
                events.append(
                    {
                        "type": "task-error",
                        "task": name,
                        "restarts": restarts,
                        "error": task.last_error,
                    }
                )
            self._restarts[name] = restarts
        u = upd.to_json()
        usig = {k: u[k] for k in _UPDATE_KEYS if k in u} or u
        if prev is not None and usig != self._prev_update:
            events.append({"type": "update", "status": usig})
        self._prev_update = usig
        changed = prev is None or (st.mode, st.estop_reason, st.model_version) != (
            prev.mode,
            prev.estop_reason,
            prev.model_version,
        )
        self._prev = st
        return events, changed


class CloudLink:
    """One robot's MQTT session, kept alive across broker outages."""

    def __init__(
        self,
        brain: BrainInterface,
        config: Config,
        *,
        queue: EventQueue | None = None,
        uploader: Callable[[str, str], Awaitable[dict[str, Any]]] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        c = config.cloud
        if not c.host:
            raise CloudConfigError("cloud.host is not set")
        self.brain = brain
        self.config = config
        self.robot_id = brain.robot_id
        self.topics = topics(config, self.robot_id)
        qdir = c.queue_dir or config.state_dir() / "cloud-queue"
        self.queue = queue or EventQueue(qdir, c.queue_max_bytes)
        if self.queue.torn_bytes:
            _log.warning("cloud queue: cut off %d damaged bytes at its end", self.queue.torn_bytes)
        self._password = read_password(c.password_file) if c.password_file else None
        if not c.tls and c.host not in ("127.0.0.1", "::1", "localhost"):
            _log.warning(
                "cloud.tls is off for %s: credentials and telemetry cross the network in clear",
                c.host,
            )
        self._tls = tls_context(config)
        self._rng = rng or random.Random()
        self.watcher = StatusWatcher(brain)
        self.commands = CommandHandler(brain, config, emit=self.emit, uploader=uploader)
        self._wake = asyncio.Event()
        self._status_dirty = asyncio.Event()
        self.connected = asyncio.Event()
        self.state = "starting"
        self.last_error: str | None = None
        self.connects = 0
        self.emit_failures = 0
        self._client: aiomqtt.Client | None = None
        self._command_tasks: set[asyncio.Task[None]] = set()
        self._outbox: collections.deque[dict[str, Any]] = collections.deque()
        self._outbox_ready = asyncio.Event()

    # ------------------------------------------------------------------ events

    def emit(self, event: dict[str, Any]) -> None:
        """Queue an event (written to disk by ``_writer``, then delivered in order).

        Never blocks: the fsync of the append happens in a worker thread, because the
        event loop also carries teleop, whose latency budget is a few milliseconds.
        """
        self._outbox.append(event)
        self._outbox_ready.set()

    def _write_outbox(self) -> None:
        while self._outbox:
            event = self._outbox.popleft()
            try:
                self.queue.append(event)
            except (OSError, ValueError) as exc:  # a full disk must not take the link down
                self.emit_failures += 1
                _log.error("cloud event %s not queued: %s", event.get("type"), exc)

    async def _writer(self) -> None:
        while True:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            await asyncio.to_thread(self._write_outbox)
            self._wake.set()

    def status_payload(self) -> dict[str, Any]:
        st = self.brain.status()
        return {
            "online": True,
            "robot_id": self.robot_id,
            "t": round(time.time(), 3),
            "mode": st.mode,
            "estop_reason": st.estop_reason,
            "model_version": st.model_version,
            "software_version": st.software_version,
            "robot_kind": st.robot_kind,
            "events_dropped": self.queue.stats()["dropped"],
        }

    # ------------------------------------------------------------------ run

    async def run(self) -> None:
        try:
            await _first_failure([self._writer(), self._watch(), self._connection_loop()])
        finally:
            await _cancel_all(list(self._command_tasks))
            self._write_outbox()  # what was raised in the last moments still reaches the disk

    async def _watch(self) -> None:
        period = self.config.cloud.status_poll_s
        while True:
            events, changed = self.watcher.poll()
            for ev in events:
                self.emit(ev)
            if changed:
                self._status_dirty.set()
            await asyncio.sleep(period)

    def _client_for_session(self) -> aiomqtt.Client:
        c = self.config.cloud
        assert c.host is not None
        will = aiomqtt.Will(
            self.topics["status"],
            json.dumps({"online": False, "robot_id": self.robot_id, "reason": "link lost"}),
            qos=1,
            retain=True,
        )
        session: dict[str, Any] = {"clean_session": True}
        if c.mqtt5:
            props = Properties(PacketTypes.CONNECT)
            props.MaximumPacketSize = MAX_INCOMING_PACKET
            # MQTT 5 has no clean_session: a clean start and a session that ends with the
            # connection (no SessionExpiryInterval) is the same thing.
            session = {
                "protocol": aiomqtt.ProtocolVersion.V5,
                "clean_start": True,
                "properties": props,
            }
        return aiomqtt.Client(
            c.host,
            c.port,
            identifier=c.client_id or f"continuon-{self.robot_id}",
            username=c.username,
            password=self._password,
            will=will,
            keepalive=c.keepalive_s,
            tls_context=self._tls,
            timeout=PUBLISH_TIMEOUT_S,
            **session,
        )

    async def _connection_loop(self) -> None:
        c = self.config.cloud
        # Full jitter on the upper half: robots of a fleet do not reconnect in lockstep.
        backoff = Backoff(
            BackoffPolicy(c.backoff_initial_s, c.backoff_max_s, jitter=0.5),
            reset_after_s=STABLE_AFTER_S,
            rng=self._rng.random,
        )
        while True:
            backoff.started()
            try:
                self.state = "connecting"
                await self._session()
            except (aiomqtt.MqttError, OSError, ssl.SSLError) as exc:
                msg = describe_error(exc)
                if msg != self.last_error or self.state == "connected":
                    _log.warning("cloud link to %s:%s: %s", c.host, c.port, msg)
                self.last_error = msg
            except Exception as exc:
                # A bug here must not crash-loop the service (the supervisor would latch
                # the e-stop for it): log it, back off, try again.
                _log.exception("cloud link session failed")
                self.last_error = f"{type(exc).__name__}: {exc}"
            finally:
                self._client = None
                self.connected.clear()
            self.state = "disconnected"
            await asyncio.sleep(backoff.next_delay())

    async def _session(self) -> None:
        client = self._client_for_session()
        async with client:
            self._client = client
            self.connects += 1
            self.state = "connected"
            self.last_error = None
            _log.info(
                "cloud link connected to %s:%s", self.config.cloud.host, self.config.cloud.port
            )
            try:
                # Inside the try: a stop while the online status awaits its PUBACK must
                # still leave "offline" retained, not the "online" the broker already took.
                await client.subscribe(self.topics["cmd"], qos=1)
                await self._publish_status(client)
                self.connected.set()
                await _first_failure(
                    [
                        self._drain(client),
                        self._telemetry(client),
                        self._receive(client),
                        self._status_updates(client),
                    ]
                )
            except asyncio.CancelledError:
                # A clean stop: say so (the will is only sent when the link dies).
                with contextlib.suppress(Exception):
                    await client.publish(
                        self.topics["status"],
                        json.dumps({"online": False, "robot_id": self.robot_id, "reason": "stop"}),
                        qos=1,
                        retain=True,
                        timeout=2.0,
                    )
                raise

    async def _publish_status(self, client: aiomqtt.Client) -> None:
        self._status_dirty.clear()
        await client.publish(
            self.topics["status"],
            json.dumps(self.status_payload(), default=str),
            qos=1,
            retain=True,
            timeout=PUBLISH_TIMEOUT_S,
        )

    async def _status_updates(self, client: aiomqtt.Client) -> None:
        while True:
            await self._status_dirty.wait()
            await self._publish_status(client)

    async def _drain(self, client: aiomqtt.Client) -> None:
        """Publish queued events in order, acking each after the broker's PUBACK."""
        while True:
            self._wake.clear()
            for rec in self.queue.pending():
                payload = {"seq": rec.seq, **rec.event}
                await client.publish(
                    self.topics["events"],
                    json.dumps(payload, default=str),
                    qos=1,
                    timeout=PUBLISH_TIMEOUT_S,
                )
                await asyncio.to_thread(self.queue.ack, rec.seq)  # fsync off the loop
            await self._wake.wait()

    async def _telemetry(self, client: aiomqtt.Client) -> None:
        period = self.config.cloud.telemetry_period_s
        while True:
            try:
                payload = {"t": round(time.time(), 3), **self.brain.telemetry().to_json()}
            except Exception as exc:
                payload = {"t": round(time.time(), 3), "error": str(exc)}
            await client.publish(
                self.topics["telemetry"], json.dumps(payload, default=str), qos=0, retain=False
            )
            await asyncio.sleep(period)

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            if message.retain:
                # A retained command would run again at every connect; commands are live only.
                _log.warning("ignoring a retained message on %s", message.topic)
                continue
            payload = message.payload
            if isinstance(payload, str):
                payload = payload.encode()
            if not isinstance(payload, bytes | bytearray):
                payload = b""
            if len(payload) > MAX_COMMAND_BYTES:
                # (MQTT 3.1.1 only: under MQTT 5 the broker never delivers one this big.)
                # Nothing of it is parsed, not even its id; the cloud hears of it as an event.
                self.emit(
                    {
                        "type": "command-rejected",
                        "id": None,
                        "reason": f"command of {len(payload)} bytes exceeds {MAX_COMMAND_BYTES}",
                    }
                )
                continue
            task = asyncio.create_task(self._run_command(client, bytes(payload)))
            self._command_tasks.add(task)
            task.add_done_callback(self._command_tasks.discard)

    async def _run_command(self, client: aiomqtt.Client, payload: bytes) -> None:
        """One command, start to reply; never raises (a task nobody awaits must not fail)."""
        try:
            try:
                command = parse_command(payload)
            except BadCommand as exc:
                self.emit({"type": "command-rejected", "id": exc.command_id, "reason": str(exc)})
                if exc.command_id is not None:
                    await self._reply(
                        client, {"id": exc.command_id, "ok": False, "error": str(exc)}
                    )
                return
            if self.commands.seen_before(command.id):
                return
            reply = await self.commands.handle(command)
            await self._reply(client, reply)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            _log.exception("cloud command failed")
            self.emit({"type": "command-failed", "reason": f"{type(exc).__name__}: {exc}"})

    async def _reply(self, client: aiomqtt.Client, reply: dict[str, Any]) -> None:
        body = json.dumps(reply, default=str)
        # The session that received the command may be gone by now: use the current one.
        for c in (client, self._client):
            if c is None:
                continue
            try:
                await c.publish(self.topics["reply"], body, qos=1, timeout=PUBLISH_TIMEOUT_S)
                return
            except aiomqtt.MqttError:
                continue
        # Offline: the reply goes into the event queue and arrives after the reconnect.
        self.emit({"type": "command-reply", **reply})

    def abort_transport(self) -> None:
        """Drop the TCP connection without a DISCONNECT (the broker then sends the will).

        For tests and for the watchdog of a wedged link.
        """
        client = self._client
        if client is None:
            return
        sock = client._client.socket()  # paho's socket
        import socket as _socket

        if isinstance(sock, _socket.socket):  # TCP or TLS; the websocket wrapper has no shutdown
            with contextlib.suppress(OSError):
                sock.shutdown(_socket.SHUT_RDWR)


async def _first_failure(coros: list[Coroutine[Any, Any, None]]) -> None:
    """Run coroutines together; the first to end (or fail) cancels the others and decides."""
    tasks = [asyncio.create_task(c) for c in coros]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await _cancel_all(tasks)
    for t in done:
        if not t.cancelled() and t.exception() is not None:
            raise t.exception()  # type: ignore[misc]


async def _cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel and reap, cancelling again if one swallowed it.

    Python 3.11's ``asyncio.wait_for`` (used inside aiomqtt's publish) can lose a
    cancellation that races with the result; the task then carries on.
    """
    pending = [t for t in tasks if not t.done()]
    interrupted = False
    while pending:
        for t in pending:
            t.cancel()
        try:
            await asyncio.wait(pending, timeout=0.5)
        except asyncio.CancelledError:
            interrupted = True  # reap the children first, then pass the cancellation on
        pending = [t for t in pending if not t.done()]
    for t in tasks:
        if not t.cancelled():
            t.exception()  # retrieved: no "exception was never retrieved" noise
    if interrupted:
        raise asyncio.CancelledError


def make_service(brain: BrainInterface, config: Config) -> Service | None:
    """The daemon's entry point: no service unless ``cloud.enabled``."""
    if not config.cloud.enabled:
        return None
    from edge_agent.uploader import upload_directory

    async def upload(out_dir: str, name: str) -> dict[str, Any]:
        return (
            await upload_directory(
                config.uploader, Path(out_dir), robot_id=brain.robot_id, name=name or None
            )
        ).as_dict()

    try:
        link = CloudLink(brain, config, uploader=upload)
    except (CloudConfigError, OSError) as exc:
        # The robot must still run (and be driven locally) with a broken cloud section.
        _log.error("cloud link disabled: %s", exc)
        return None
    return Service(name="cloud-link", run=link.run)

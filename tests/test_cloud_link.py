"""The MQTT cloud link against a real mosquitto broker started by the test.

Round trip of status / telemetry / events / commands, the last will, a broker
restart with events queued on disk meanwhile, refused motion commands, TLS with
a client certificate and a password file, a wrong password, and the on-disk
event queue's bounds and crash safety.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from edge_agent.cloud.commands import ALLOWED, MOTION
from edge_agent.cloud.link import CloudLink, make_service
from edge_agent.cloud.queue import LOG_NAME, EventQueue
from tests.emulation import wall
from tests.mosquitto_helpers import Broker, make_certs, password_file, require_mosquitto
from tests.network_helpers import FakeBrain, config_for, record_episodes
from tests.waiting import wait_until_async

pytestmark = pytest.mark.integration

TOPIC = "continuon/bot-1"


@pytest.fixture
def broker(tmp_path):
    require_mosquitto()
    b = Broker(tmp_path / "broker")
    b.start()
    yield b
    b.stop()


def cloud_cfg(tmp_path: Path, broker: Broker, **cloud: Any):
    section = {
        "enabled": True,
        "host": "127.0.0.1",
        "port": broker.port,
        "tls": False,
        "telemetry_period_s": 0.2,
        "status_poll_s": 0.05,
        "backoff_initial_s": 0.1,
        "backoff_max_s": 0.5,
        "keepalive_s": 5,
        **cloud,
    }
    return config_for(tmp_path, cloud=section)


class Watcher:
    """A cloud-side subscriber: collects (topic, payload, retain) and waits for conditions."""

    def __init__(self, port: int, *, identifier: str | None = None, clean: bool = True, **kw):
        self.client = aiomqtt.Client(
            "127.0.0.1", port, identifier=identifier, clean_session=clean, **kw
        )
        self.messages: list[tuple[str, Any, bool]] = []
        self._task: asyncio.Task | None = None
        self._changed = asyncio.Event()

    async def __aenter__(self) -> Watcher:
        await self.client.__aenter__()
        await self.client.subscribe(f"{TOPIC}/#", qos=1)
        self._task = asyncio.create_task(self._collect())
        return self

    async def __aexit__(self, *exc) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        with contextlib.suppress(Exception):
            await self.client.__aexit__(None, None, None)

    async def _collect(self) -> None:
        with contextlib.suppress(aiomqtt.MqttError):
            async for m in self.client.messages:
                try:
                    payload = json.loads(m.payload) if m.payload else None
                except (ValueError, RecursionError):
                    payload = m.payload  # the test's own garbage on the cmd topic
                self.messages.append((m.topic.value, payload, m.retain))
                self._changed.set()

    def on(self, suffix: str) -> list[Any]:
        return [p for t, p, _ in self.messages if t == f"{TOPIC}/{suffix}"]

    async def wait(self, cond: Callable[[], Any], timeout: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            got = cond()
            if got:
                return got
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out; last messages: {self.messages[-6:]}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 0.5))

    async def send(self, obj: Any, retain: bool = False) -> None:
        await self.client.publish(f"{TOPIC}/cmd", json.dumps(obj), qos=1, retain=retain)


def events_of(w: Watcher, kind: str) -> list[dict]:
    return [e for e in w.on("events") if e.get("type") == kind]


def replies(w: Watcher, cid: str) -> list[dict]:
    return [r for r in w.on("cmd/reply") if r.get("id") == cid]


@contextlib.asynccontextmanager
async def running(link: CloudLink):
    task = asyncio.create_task(link.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_round_trip_status_telemetry_events_and_commands(tmp_path, broker):
    async def body():
        brain = FakeBrain()
        link = CloudLink(brain, cloud_cfg(tmp_path, broker))
        async with running(link):
            await asyncio.wait_for(link.connected.wait(), 10)
            async with Watcher(broker.port) as w:
                # Retained status (the watcher subscribed after the link published it).
                st = await w.wait(
                    lambda: [p for t, p, r in w.messages if r and t.endswith("status")]
                )
                assert st[0]["online"] is True and st[0]["mode"] == "idle"
                assert st[0]["model_version"] == "model-1"
                tel = await w.wait(lambda: w.on("telemetry"))
                assert tel[0]["ticks"] == 42
                assert not any(r for t, _, r in w.messages if t.endswith("telemetry"))

                brain.mode = "manual"
                ev = await w.wait(lambda: events_of(w, "mode"))
                assert ev[0]["from"] == "idle" and ev[0]["to"] == "manual"
                assert isinstance(ev[0]["seq"], int)
                # The status is republished with the new mode.
                await w.wait(lambda: [s for s in w.on("status") if s.get("mode") == "manual"])

                brain.estop_reason = "bumper"
                brain.mode = "estop"
                await w.wait(lambda: events_of(w, "estop"))
                brain.update = brain.update.model_copy(update={"phase": "trial"})
                upd = await w.wait(lambda: events_of(w, "update"))
                assert upd[0]["status"]["phase"] == "trial"

                await w.send({"id": "c1", "cmd": "ping"})
                r = await w.wait(lambda: replies(w, "c1"))
                assert r[0]["ok"] is True and r[0]["result"]["pong"] is True

                await w.send({"id": "c2", "cmd": "check-update"})
                r = await w.wait(lambda: replies(w, "c2"))
                assert r[0]["ok"] is True and brain.update_checks == 1
                # A redelivered command (same id) runs once.
                await w.send({"id": "c2", "cmd": "check-update"})
                await w.send({"id": "c3", "cmd": "ping"})
                await w.wait(lambda: replies(w, "c3"))
                assert brain.update_checks == 1 and len(replies(w, "c2")) == 1

                # Malformed commands are answered, never crash the link.
                await w.send({"id": "c4", "cmd": "ping", "args": [1]})
                r = await w.wait(lambda: replies(w, "c4"))
                assert r[0]["ok"] is False and "args" in r[0]["error"]
                await w.client.publish(f"{TOPIC}/cmd", b"\xff not json", qos=1)
                await w.wait(lambda: events_of(w, "command-rejected"))
                # upload-episodes without a destination: a clear error.
                await w.send({"id": "c5", "cmd": "upload-episodes"})
                r = await w.wait(lambda: replies(w, "c5"))
                assert r[0]["ok"] is False and "uploader.destination" in r[0]["error"]

            seqs = [e["seq"] for e in w.on("events")]
            assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
            assert link.connects == 1

    asyncio.run(body())


def test_motion_commands_are_refused_with_an_event(tmp_path, broker):
    async def body():
        brain = FakeBrain()
        link = CloudLink(brain, cloud_cfg(tmp_path, broker))
        async with Watcher(broker.port) as w0:
            # A retained command is stale by definition: the link must not run it at connect.
            await w0.send({"id": "r1", "cmd": "check-update"}, retain=True)
        async with running(link), Watcher(broker.port) as w:
            await asyncio.wait_for(link.connected.wait(), 10)
            motion = sorted(MOTION)
            for i, cmd in enumerate(motion):
                await w.send({"id": f"m{i}", "cmd": cmd, "args": {}})
            await w.send({"id": "u1", "cmd": "self-destruct"})
            await w.wait(lambda: len(w.on("cmd/reply")) >= len(motion) + 1)
            for i, cmd in enumerate(motion):
                (r,) = replies(w, f"m{i}")
                assert r["ok"] is False and "never move" in r["error"], (cmd, r)
            (r,) = replies(w, "u1")
            assert r["ok"] is False and "unknown command" in r["error"]
            refused = await w.wait(
                lambda: (
                    len(events_of(w, "command-refused")) > len(motion)
                    and events_of(w, "command-refused")
                )
            )
            assert {e["cmd"] for e in refused} == {*motion, "self-destruct"}
            # The retained command left before the link connected was not run.
            await asyncio.sleep(0.3)
            assert not replies(w, "r1")
            await w.client.publish(f"{TOPIC}/cmd", b"", qos=1, retain=True)  # clear it
        assert brain.motion_calls == []
        assert brain.update_checks == 0
        assert set(ALLOWED) == {"ping", "check-update", "upload-episodes"}

    asyncio.run(body())


def test_offline_on_a_stop_while_the_session_is_still_starting(tmp_path, broker):
    async def body():
        link = CloudLink(FakeBrain(), cloud_cfg(tmp_path, broker))
        real, published = link._publish_status, asyncio.Event()

        async def online_then_stall(client):
            await real(client)  # the broker has "online" retained ...
            published.set()
            await asyncio.Event().wait()  # ... and the stop comes before the session goes on

        link._publish_status = online_then_stall
        async with Watcher(broker.port) as w:
            async with running(link):
                await asyncio.wait_for(published.wait(), 10)
                await w.wait(lambda: [s for s in w.on("status") if s["online"]])
            last = await w.wait(lambda: not w.on("status")[-1]["online"] and w.on("status")[-1])
            assert last["reason"] == "stop"

    asyncio.run(body())


def test_last_will_when_the_link_dies_and_offline_on_clean_stop(tmp_path, broker):
    async def body():
        brain = FakeBrain()
        link = CloudLink(brain, cloud_cfg(tmp_path, broker))
        async with Watcher(broker.port) as w:
            async with running(link):
                await w.wait(lambda: [s for s in w.on("status") if s["online"]])
                link.abort_transport()  # the TCP connection dies without a DISCONNECT
                will = await w.wait(lambda: [s for s in w.on("status") if not s["online"]])
                assert will[0]["reason"] == "link lost"
                # ... and the link comes back by itself.
                await w.wait(lambda: link.connects >= 2)
                await w.wait(lambda: w.on("status")[-1]["online"])
            # Stopping the service says offline explicitly (a clean disconnect sends no will).
            last = await w.wait(lambda: not w.on("status")[-1]["online"] and w.on("status")[-1])
            assert last["reason"] == "stop"
        # A later subscriber sees the retained offline status.
        async with Watcher(broker.port) as w3:
            st = await w3.wait(lambda: w3.on("status"))
            assert st[-1]["online"] is False

    asyncio.run(body())


def test_broker_restart_queues_events_on_disk_and_delivers_them_in_order(tmp_path, broker):
    async def body():
        brain = FakeBrain()
        cfg = cloud_cfg(tmp_path, broker)
        link = CloudLink(brain, cfg)
        log_path = cfg.cloud.queue_dir or cfg.state_dir() / "cloud-queue"
        # A persistent session for the cloud side: it receives what was sent while it was away.
        sub = {"identifier": "fleet-view", "clean": False}
        async with running(link):
            async with Watcher(broker.port, **sub) as w:
                await asyncio.wait_for(link.connected.wait(), 10)
                brain.mode = "manual"
                await w.wait(lambda: events_of(w, "mode"))
                # acknowledged too (QoS 1: a PUBACK lost with the broker means a resend)
                await wait_until_async(lambda: link.queue.stats()["pending"] == 0, timeout=5)
            broker.stop()  # SIGTERM: the broker saves its sessions and goes away
            await wait_until_async(lambda: link.state != "connected", timeout=10)

            for mode in ("idle", "manual", "idle"):
                brain.mode = mode
                await asyncio.sleep(0.15)
            brain.estop_reason = "operator"
            brain.mode = "estop"
            await wait_until_async(lambda: link.queue.stats()["pending"] >= 5, timeout=5)
            # Durable on disk before the broker is back.
            on_disk = (log_path / LOG_NAME).read_text().splitlines()
            assert len(on_disk) == 5

            broker.start()
            async with Watcher(broker.port, **sub) as w:
                await wait_until_async(lambda: link.connects >= 2, timeout=15)
                evs = await w.wait(lambda: len(w.on("events")) >= 5 and w.on("events"))
            got = [(e["type"], e.get("to") or e.get("reason")) for e in evs]
            assert got == [
                ("mode", "idle"),
                ("mode", "manual"),
                ("mode", "idle"),
                ("mode", "estop"),
                ("estop", "operator"),
            ]
            seqs = [e["seq"] for e in evs]
            assert seqs == sorted(seqs)
            await wait_until_async(lambda: link.queue.stats()["pending"] == 0, timeout=5)

    asyncio.run(body())


def test_tls_client_certificate_and_password_and_a_wrong_password(tmp_path, caplog):
    require_mosquitto()
    certs = make_certs(tmp_path / "pki")
    pw = password_file(tmp_path / "broker-passwd", "bot-1", "s3cret-pw")
    broker = Broker(
        tmp_path / "tls-broker",
        extra=[
            f"cafile {certs.ca}",
            f"certfile {certs.server_cert}",
            f"keyfile {certs.server_key}",
            "require_certificate true",
            f"password_file {pw}",
            "allow_anonymous false",
        ],
    )
    broker.start()
    good = tmp_path / "good-password"
    good.write_text("s3cret-pw\n")
    good.chmod(0o600)
    bad = tmp_path / "bad-password"
    bad.write_text("guess\n")
    bad.chmod(0o600)
    tls = {
        "tls": True,
        "ca_file": str(certs.ca),
        "cert_file": str(certs.client_cert),
        "key_file": str(certs.client_key),
        "username": "bot-1",
    }

    async def body():
        import ssl

        ctx = ssl.create_default_context(cafile=str(certs.ca))
        ctx.load_cert_chain(str(certs.client_cert), str(certs.client_key))
        brain = FakeBrain()
        link = CloudLink(brain, cloud_cfg(tmp_path / "a", broker, **tls, password_file=str(good)))
        async with running(link):
            await asyncio.wait_for(link.connected.wait(), 10)
            async with Watcher(
                broker.port, username="bot-1", password="s3cret-pw", tls_context=ctx
            ) as w:
                await w.send({"id": "t1", "cmd": "ping"})
                r = await w.wait(lambda: replies(w, "t1"))
                assert r[0]["ok"] is True

        caplog.set_level(logging.WARNING, logger="edge_agent.cloud.link")
        wrong = CloudLink(brain, cloud_cfg(tmp_path / "b", broker, **tls, password_file=str(bad)))
        async with running(wrong):
            await wait_until_async(lambda: wrong.last_error is not None, timeout=10)
            await asyncio.sleep(0.5)
            assert wrong.connects == 0 and not wrong.connected.is_set()
            assert "refused the credentials" in wrong.last_error
        assert "refused the credentials" in caplog.text

        # Without the CA the broker's certificate is not trusted: a clear TLS error.
        notrust = CloudLink(
            brain,
            cloud_cfg(tmp_path / "c", broker, **{**tls, "ca_file": None}, password_file=str(good)),
        )
        async with running(notrust):
            await wait_until_async(lambda: notrust.last_error is not None, timeout=10)
            assert notrust.connects == 0 and "certificate" in notrust.last_error

    try:
        asyncio.run(body())
    finally:
        broker.stop()


def test_service_factory_and_config_errors(tmp_path, caplog):
    brain = FakeBrain()
    assert make_service(brain, config_for(tmp_path)) is None  # cloud is off by default
    with pytest.raises(ValueError, match=r"cloud\.host"):
        config_for(tmp_path, cloud={"enabled": True})
    with pytest.raises(ValueError, match="key_file"):
        config_for(tmp_path, cloud={"host": "h", "cert_file": "/x.pem"})
    with pytest.raises(ValueError, match="username"):
        config_for(tmp_path, cloud={"host": "h", "password_file": "/x"})
    missing = config_for(
        tmp_path,
        cloud={
            "enabled": True,
            "host": "h",
            "username": "u",
            "password_file": str(tmp_path / "nope"),
        },
    )
    with caplog.at_level(logging.ERROR, logger="edge_agent.cloud.link"):
        assert make_service(brain, missing) is None  # the robot runs on, without the cloud
    assert "password_file" in caplog.text and "nope" in caplog.text
    svc = make_service(
        brain, config_for(tmp_path, cloud={"enabled": True, "host": "h", "tls": False})
    )
    assert svc is not None and svc.name == "cloud-link"


# ----------------------------------------------------------------------------- the disk queue


def test_queue_is_bounded_drops_oldest_counts_and_survives_reopen(tmp_path):
    q = EventQueue(tmp_path / "q", max_bytes=4096)
    seqs = [q.append({"type": "mode", "n": i, "pad": "x" * 100}) for i in range(100)]
    assert seqs == list(range(1, 101))
    st = q.stats()
    assert st["dropped"] > 0 and st["pending"] + st["dropped"] == 100
    assert (tmp_path / "q" / LOG_NAME).stat().st_size <= 4096
    kept = [r.event["n"] for r in q.pending()]
    assert kept == list(range(100 - len(kept), 100))  # the newest, in order

    q2 = EventQueue(tmp_path / "q", max_bytes=4096)
    assert [r.event["n"] for r in q2.pending()] == kept
    assert q2.stats()["dropped"] == st["dropped"]
    q2.ack(q2.pending()[1].seq)
    assert [r.event["n"] for r in q2.pending()] == kept[2:]
    assert q2.append({"type": "x"}) == 101  # sequence numbers never go back

    q3 = EventQueue(tmp_path / "q", max_bytes=4096)
    assert [r.event.get("n") for r in q3.pending()] == [*kept[2:], None]
    q3.ack(q3.pending()[-1].seq)
    assert q3.pending() == [] and (tmp_path / "q" / LOG_NAME).stat().st_size == 0
    assert EventQueue(tmp_path / "q", 4096).append({"type": "y"}) == 102


def test_queue_cuts_a_torn_append_and_keeps_the_rest(tmp_path):
    q = EventQueue(tmp_path / "q", max_bytes=1 << 16)
    for i in range(3):
        q.append({"type": "e", "n": i})
    log = tmp_path / "q" / LOG_NAME
    data = log.read_bytes()
    # A power cut in the middle of the fourth append, then a flipped bit in the third.
    log.write_bytes(data + b'0badc0de {"seq": 4, "ev')
    q2 = EventQueue(tmp_path / "q", max_bytes=1 << 16)
    assert [r.event["n"] for r in q2.pending()] == [0, 1, 2]
    assert q2.torn_bytes > 0 and log.read_bytes() == data
    assert q2.append({"type": "e", "n": 3}) == 4
    lines = log.read_bytes().splitlines(keepends=True)
    corrupt = lines[2].replace(b'"n":2', b'"n":7')
    log.write_bytes(b"".join([*lines[:2], corrupt, lines[3]]))
    q3 = EventQueue(tmp_path / "q", max_bytes=1 << 16)
    assert [r.event["n"] for r in q3.pending()] == [0, 1]
    with pytest.raises(ValueError, match="too large"):
        q3.append({"blob": "x" * 40000})


def test_queue_append_is_fsynced(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    EventQueue(tmp_path / "q", 1 << 16).append({"type": "e"})
    assert synced


# ----------------------------------------------------------------------------- upload-episodes


def test_upload_episodes_command_exports_and_uploads(tmp_path, broker):
    async def body():
        dest = tmp_path / "bucket"
        cfg = cloud_cfg(tmp_path, broker)
        cfg = cfg.model_copy(
            update={"uploader": cfg.uploader.model_copy(update={"destination": str(dest)})}
        )
        record_episodes(cfg.episodes_dir(), 3)
        brain = FakeBrain(cfg)
        svc = make_service(brain, cfg)
        assert svc is not None
        task = asyncio.create_task(svc.run())
        try:
            async with Watcher(broker.port) as w:
                await w.wait(lambda: w.on("status"))
                await w.send({"id": "up1", "cmd": "upload-episodes", "args": {"format": "rlds"}})
                (r,) = await w.wait(lambda: replies(w, "up1"), timeout=30)
                assert r["ok"] is True, r
                up = r["result"]["upload"]
                assert up["ok"] and not up["mismatched"]
                await w.wait(lambda: events_of(w, "upload-finished"))
                assert [e["type"] for e in w.on("events")][-2:] == [
                    "upload-started",
                    "upload-finished",
                ]
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        assert brain.exports == [{"format": "rlds"}]
        from rlds.datasets.manifest import verify_manifest

        (landed,) = list((dest / "bot-1").iterdir())
        assert verify_manifest(landed) == []
        assert brain.motion_calls == []

    asyncio.run(body())


def test_broker_sigkill_while_connected(tmp_path, broker):
    """The broker dies hard; the link notices and reconnects when it is back."""

    async def body():
        brain = FakeBrain()
        link = CloudLink(brain, cloud_cfg(tmp_path, broker))
        async with running(link):
            await asyncio.wait_for(link.connected.wait(), 10)
            broker.stop(signal.SIGKILL)
            await wait_until_async(lambda: link.state != "connected", timeout=15)
            brain.mode = "manual"
            broker.start()
            await wait_until_async(lambda: link.connects >= 2, timeout=15)
            await wait_until_async(lambda: link.queue.stats()["pending"] == 0, timeout=5)

    asyncio.run(body())


# ----------------------------------------------------------------------------- in the daemon


def test_in_the_real_daemon_events_status_and_no_motion_from_the_cloud(tmp_path, broker):
    """The simulated robot's daemon runs the link as a service (BrainHandle, not a stand-in)."""
    import yaml

    from brain.config import parse_config
    from brain.daemon import Daemon
    from brain.modes import Mode

    root = Path(__file__).resolve().parent.parent
    raw = yaml.safe_load((root / "configs" / "sim-donkey.yaml").read_text())
    raw["robot"] = {**raw.get("robot", {}), "id": "bot-1"}
    raw["paths"] = {"state_dir": str(tmp_path / "state")}
    raw["logging"] = {"level": "WARNING", "format": "text"}
    raw["hardware"]["camera"].update(width=160, height=120)
    raw["cloud"] = {
        "enabled": True,
        "host": "127.0.0.1",
        "port": broker.port,
        "tls": False,
        "telemetry_period_s": 0.2,
        "status_poll_s": 0.05,
        "backoff_initial_s": 0.1,
        "backoff_max_s": 0.5,
    }
    cfg = parse_config(raw)

    async def body():
        daemon = Daemon(cfg, services=[make_service])
        task = asyncio.create_task(daemon.run())
        await daemon.wait_ready(wall(10))
        try:
            async with Watcher(broker.port) as w:
                st = await w.wait(lambda: [s for s in w.on("status") if s["online"]])
                assert st[0]["mode"] == "idle" and st[0]["robot_kind"] == "car"
                tel = await w.wait(lambda: w.on("telemetry"))
                assert tel[0]["mode"] == "idle" and "ticks" in tel[0]
                await w.send({"id": "d1", "cmd": "mode", "args": {"mode": "manual"}})
                await w.send({"id": "d2", "cmd": "teleop", "args": {"action": [0, 1]}})
                await w.send({"id": "d3", "cmd": "reset"})
                await w.send({"id": "d4", "cmd": "ping"})
                await w.wait(lambda: replies(w, "d4"))
                for cid in ("d1", "d2", "d3"):
                    await w.wait(lambda cid=cid: replies(w, cid))
                    assert replies(w, cid)[0]["ok"] is False
                assert daemon.modes.mode is Mode.IDLE
                daemon.brain.estop("bumper hit")
                ev = await w.wait(lambda: events_of(w, "estop"))
                assert ev[0]["reason"] == "bumper hit"
                await w.wait(lambda: [s for s in w.on("status") if s.get("estop_reason")])
                # The cloud cannot clear the e-stop either.
                await w.send({"id": "d5", "cmd": "reset-estop"})
                await w.wait(lambda: replies(w, "d5"))
                assert daemon.brain.status().to_json()["estop_reason"] == "bumper hit"
                daemon.request_stop("test")
                await asyncio.wait_for(task, wall(10))
                last = await w.wait(lambda: not w.on("status")[-1]["online"] and w.on("status"))
                assert last[-1]["reason"] == "stop"
        finally:
            if not task.done():
                daemon.request_stop("test")
                await asyncio.wait_for(task, wall(10))

    asyncio.run(body())


def test_reconnect_backs_off_exponentially_with_a_cap(tmp_path):
    """No broker at all: attempts slow down (doubling, jittered) but never stop."""
    from tests.mosquitto_helpers import free_port

    attempts: list[float] = []

    class Counting(CloudLink):
        async def _session(self) -> None:
            attempts.append(time.monotonic())
            await super()._session()

    cfg = config_for(
        tmp_path,
        cloud={
            "enabled": True,
            "host": "127.0.0.1",
            "port": free_port(),
            "tls": False,
            "backoff_initial_s": 0.1,
            "backoff_max_s": 0.4,
        },
    )

    async def body():
        link = Counting(FakeBrain(), cfg)
        async with running(link):
            await asyncio.sleep(3.0)
        assert "refused" in (link.last_error or "")
        return link

    asyncio.run(body())
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert 5 <= len(attempts) <= 20, attempts
    # Growing at first (0.05-0.1, 0.1-0.2, 0.2-0.4 s), then capped (never above 0.4 s + slack).
    assert gaps[0] < 0.2 and max(gaps) < 0.7
    assert sum(gaps[-3:]) / 3 > gaps[0]


def test_hostile_commands_deep_nesting_and_oversize_are_refused_not_crashed(tmp_path, broker):
    """8,000-deep nesting, an 8 MiB payload: an event each (or never delivered), no task crash."""

    async def body(mqtt5: bool, sub: str) -> tuple[Watcher, list[dict]]:
        loop_errors: list[dict] = []
        asyncio.get_running_loop().set_exception_handler(lambda _l, ctx: loop_errors.append(ctx))
        link = CloudLink(FakeBrain(), cloud_cfg(tmp_path / sub, broker, mqtt5=mqtt5))
        async with running(link), Watcher(broker.port) as w:
            await asyncio.wait_for(link.connected.wait(), 10)
            deep = b"[" * 8000 + b"]" * 8000  # 16,000 B: under the size limit, over the stack
            await w.client.publish(f"{TOPIC}/cmd", deep, qos=1)
            nested_args = b'{"id": "d2", "cmd": "ping", "args": ' + b"[" * 5000 + b"]" * 5000 + b"}"
            await w.client.publish(f"{TOPIC}/cmd", nested_args, qos=1)
            big = b'{"id": "big", "cmd": "ping", "args": {"x": "' + b"a" * (8 << 20) + b'"}}'
            await w.client.publish(f"{TOPIC}/cmd", big, qos=1)
            await w.send({"id": "after", "cmd": "ping"})
            await w.wait(lambda: replies(w, "after"))
            rejected = await w.wait(
                lambda: (
                    len(events_of(w, "command-rejected")) >= 2 and events_of(w, "command-rejected")
                )
            )
            await asyncio.sleep(0.3)
            rejected = events_of(w, "command-rejected")
            assert not replies(w, "big"), "an 8 MiB command must never be parsed"
            gc_errors = [e for e in loop_errors if "exception" in e]
            assert not gc_errors, gc_errors  # "Task exception was never retrieved"
            assert not events_of(w, "command-failed")
            return w, rejected

    _, rejected = asyncio.run(body(True, "v5"))
    assert [e["reason"] for e in rejected] == ["command is nested too deeply to be a command"] * 2
    # Under MQTT 5 the broker honoured the robot's Maximum Packet Size: the 8 MiB message
    # was never sent to the robot's session, so nothing of it was read into memory.
    log = broker.log.read_text()
    assert "Sending PUBLISH to continuon-bot-1" in log
    assert "Dropping too large outgoing PUBLISH for continuon-bot-1" in log
    # Under MQTT 3.1.1 it arrives (paho reads it) and is dropped by size before any parsing.
    _, rejected = asyncio.run(body(False, "v311"))
    reasons = [e["reason"] for e in rejected]
    assert reasons.count("command is nested too deeply to be a command") == 2
    assert [r for r in reasons if "exceeds 16384" in r]

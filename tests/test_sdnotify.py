"""sd_notify: socket addressing, sending, failure handling, watchdog interval."""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import threading
import uuid
from collections.abc import Iterator

import pytest

from brain.sdnotify import SdNotifier, watchdog_interval

pytestmark = pytest.mark.timeout(20)


@pytest.fixture
def receiver() -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket bound at a short filesystem path, like systemd's."""
    with tempfile.TemporaryDirectory(prefix="cb-", dir="/tmp") as d:
        path = os.path.join(d, "notify")
        rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        rx.bind(path)
        rx.settimeout(5)
        try:
            yield rx, path
        finally:
            rx.close()


def test_disabled_without_notify_socket(monkeypatch, caplog) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = SdNotifier()
    assert not n.enabled
    assert n.address is None
    with caplog.at_level(logging.DEBUG, logger="brain.sdnotify"):
        assert n.ready() is False
        assert n.watchdog() is False
        assert n.stopping() is False
    assert caplog.records == []


def test_empty_or_relative_socket_is_disabled(monkeypatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "")
    assert not SdNotifier().enabled
    assert not SdNotifier("relative/path").enabled
    assert not SdNotifier("@").enabled


def test_env_path_and_explicit_path(monkeypatch, receiver) -> None:
    rx, path = receiver
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    n = SdNotifier()
    assert n.enabled
    assert n.address == os.fsencode(path)
    assert n.ready() is True
    assert rx.recv(4096) == b"READY=1"
    assert SdNotifier(path).status("driving\nlap 3") is True
    assert rx.recv(4096) == b"STATUS=driving lap 3"
    assert n.notify("WATCHDOG=1", "STATUS=ok") is True
    assert rx.recv(4096) == b"WATCHDOG=1\nSTATUS=ok"
    n.stopping("bye")
    assert rx.recv(4096) == b"STOPPING=1\nSTATUS=bye"
    n.extend_timeout(2.5)
    assert rx.recv(4096) == b"EXTEND_TIMEOUT_USEC=2500000"
    n.reloading()
    first, second = rx.recv(4096).split(b"\n")
    assert first == b"RELOADING=1" and second.startswith(b"MONOTONIC_USEC=")
    n.close()


def test_abstract_socket_name() -> None:
    name = f"continuon-test-{uuid.uuid4().hex}"
    n = SdNotifier("@" + name)
    assert n.address == b"\0" + name.encode()
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(b"\0" + name.encode())
    rx.settimeout(5)
    try:
        assert n.watchdog() is True
        assert rx.recv(4096) == b"WATCHDOG=1"
    finally:
        rx.close()
        n.close()


def test_send_failure_never_raises_and_warns_once(caplog) -> None:
    with tempfile.TemporaryDirectory(prefix="cb-", dir="/tmp") as d:
        n = SdNotifier(os.path.join(d, "nobody-listens"))
        assert n.enabled
        with caplog.at_level(logging.DEBUG, logger="brain.sdnotify"):
            assert n.ready() is False
            assert n.watchdog() is False
            assert n.watchdog() is False
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert len([r for r in caplog.records if r.levelno == logging.DEBUG]) == 2


def test_malformed_field_is_a_programming_error() -> None:
    n = SdNotifier(None)  # whatever the environment says
    with pytest.raises(ValueError):
        n.notify("READY")
    with pytest.raises(ValueError):
        n.notify("STATUS=two\nlines")


def test_thread_safe_sending(receiver) -> None:
    rx, path = receiver
    # A generous send timeout: on a loaded machine the reader may lag and a full
    # datagram queue must block the senders, not fail them (this tests interleaving).
    n = SdNotifier(path, send_timeout_s=20.0)
    received: list[bytes] = []

    def drain() -> None:
        while len(received) < 200:
            received.append(rx.recv(4096))

    reader = threading.Thread(target=drain)
    reader.start()

    def send(i: int) -> None:
        for j in range(50):
            assert n.status(f"t{i}-{j}")

    senders = [threading.Thread(target=send, args=(i,)) for i in range(4)]
    for t in senders:
        t.start()
    for t in senders:
        t.join()
    reader.join(timeout=5)
    assert sorted(received) == sorted(
        f"STATUS=t{i}-{j}".encode() for i in range(4) for j in range(50)
    )


def test_watchdog_interval(monkeypatch) -> None:
    pid = str(os.getpid())
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "3000000"}) == pytest.approx(1.5)
    assert watchdog_interval({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": pid}) == 1.5
    assert watchdog_interval({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "x"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None

    monkeypatch.setenv("WATCHDOG_USEC", "10000000")
    monkeypatch.setenv("WATCHDOG_PID", pid)
    assert watchdog_interval() == pytest.approx(5.0)
    assert SdNotifier("@anything").watchdog_interval() == pytest.approx(5.0)
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert watchdog_interval() is None

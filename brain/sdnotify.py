"""systemd's service notification protocol (``sd_notify``), without libsystemd.

A ``Type=notify`` unit tells systemd that it has started (``READY=1``), that it
is still alive (``WATCHDOG=1``, at least once per ``WatchdogSec``) and that it
is shutting down (``STOPPING=1``) by sending newline-separated ``KEY=VALUE``
fields in one datagram to the AF_UNIX socket named by ``$NOTIFY_SOCKET``.

Outside systemd (a laptop, CI, a shell) ``$NOTIFY_SOCKET`` is unset and every
call is a cheap no-op, so the daemon calls the notifier unconditionally.

A failed send never raises: the robot must keep driving safely even if it
cannot talk to its init system.  The first failure is logged at WARNING, the
following ones at DEBUG.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)

__all__ = ["SdNotifier", "watchdog_interval"]


def _address(socket_path: str | None) -> bytes | None:
    """The sendto() address for ``socket_path``: ``None`` when notification is off.

    Like libsystemd, only absolute filesystem paths and abstract names (``@name``,
    sent with a leading NUL byte) are accepted.
    """
    if not socket_path:
        return None
    if socket_path.startswith("@"):
        if len(socket_path) < 2:
            log.warning(
                "NOTIFY_SOCKET %r is not usable; systemd notification disabled", socket_path
            )
            return None
        return b"\0" + os.fsencode(socket_path[1:])
    if socket_path.startswith("/"):
        return os.fsencode(socket_path)
    log.warning(
        "NOTIFY_SOCKET %r is neither an absolute path nor an abstract name (@...); "
        "systemd notification disabled",
        socket_path,
    )
    return None


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between two ``WATCHDOG=1`` pings, or ``None`` when no watchdog is armed.

    systemd sets ``$WATCHDOG_USEC`` to the unit's ``WatchdogSec`` (and ``$WATCHDOG_PID``
    to the process it is meant for; a child that inherited the variables must not
    ping).  The returned period is half the timeout, as systemd recommends.
    """
    env = os.environ if environ is None else environ
    usec_text = env.get("WATCHDOG_USEC")
    if not usec_text:
        return None
    pid_text = env.get("WATCHDOG_PID")
    if pid_text:
        try:
            pid = int(pid_text)
        except ValueError:
            return None
        if pid != os.getpid():
            return None
    try:
        usec = int(usec_text)
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 2 / 1_000_000


class SdNotifier:
    """Sends notifications to systemd; thread-safe; a no-op when not under systemd.

    ``socket_path`` defaults to ``$NOTIFY_SOCKET``.  A path starting with ``@`` is
    an abstract socket name.  ``send_timeout_s`` bounds how long a send may block
    if systemd's queue is full (sending happens on the caller's thread, which is
    usually the event loop).
    """

    def __init__(self, socket_path: str | None = None, *, send_timeout_s: float = 1.0) -> None:
        if socket_path is None:
            socket_path = os.environ.get("NOTIFY_SOCKET")
        self._address = _address(socket_path)
        self._send_timeout_s = send_timeout_s
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._warned = False

    # ------------------------------------------------------------------ state

    @property
    def enabled(self) -> bool:
        """True when there is a notification socket to send to."""
        return self._address is not None

    @property
    def address(self) -> bytes | None:
        """The socket address as sent to (abstract names start with a NUL byte)."""
        return self._address

    def watchdog_interval(self) -> float | None:
        """See :func:`watchdog_interval`; ``None`` also when notification is off."""
        return watchdog_interval() if self.enabled else None

    # ------------------------------------------------------------------ sending

    def notify(self, *fields: str) -> bool:
        """Send ``KEY=VALUE`` fields in one datagram; True if it was sent.

        Raises ``ValueError`` for a malformed field (a programming error); a
        failure to send is logged and returns False.
        """
        for field in fields:
            key, sep, _ = field.partition("=")
            if not sep or not key or "\n" in field:
                raise ValueError(f"sd_notify field must be one line KEY=VALUE, got {field!r}")
        if self._address is None or not fields:
            return False
        payload = "\n".join(fields).encode("utf-8")
        with self._lock:
            try:
                if self._sock is None:
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                    sock.settimeout(self._send_timeout_s)
                    self._sock = sock
                self._sock.sendto(payload, self._address)
            except OSError as exc:
                # Drop the socket: the next call starts from a fresh one.
                self._close_locked()
                level = logging.DEBUG if self._warned else logging.WARNING
                self._warned = True
                log.log(level, "sd_notify to %r failed: %s", self._address, exc)
                return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """``READY=1``: start-up is complete (ends ``systemctl start``)."""
        return self.notify("READY=1", *self._status_field(status))

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1``: shutdown has begun."""
        return self.notify("STOPPING=1", *self._status_field(status))

    def reloading(self) -> bool:
        """``RELOADING=1`` with the monotonic timestamp newer systemd expects."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: keep-alive ping; send every :meth:`watchdog_interval` s."""
        return self.notify("WATCHDOG=1")

    def status(self, text: str) -> bool:
        """``STATUS=...``: one line shown by ``systemctl status``."""
        return self.notify(*self._status_field(text))

    def extend_timeout(self, seconds: float) -> bool:
        """``EXTEND_TIMEOUT_USEC``: ask for more time to start or stop (slow model load)."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={max(0, int(seconds * 1_000_000))}")

    @staticmethod
    def _status_field(text: str | None) -> tuple[str, ...]:
        if text is None:
            return ()
        return ("STATUS=" + " ".join(text.splitlines()),)

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    def __enter__(self) -> SdNotifier:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

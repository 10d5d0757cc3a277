"""The Host header check: only the robot's own names and addresses (DNS rebinding).

A web page on the LAN can point a name it controls at the robot's address;
the browser then treats the robot as that page's own origin and sends
``Host: evil.example`` with a matching ``Origin``, so an Origin check alone
lets the page in.  Refusing every Host that is not one of the robot's names
or addresses closes that: the browser cannot put a name we own into the
request without the robot's own origin.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Iterable

import ifaddr

from brain.config import Config
from edge_agent.discovery import host_name

REFRESH_MIN_S = 1.0  # on a miss, re-read names and addresses at most this often (DHCP changes)


def split_host(header: str) -> str | None:
    """The host part of a Host header, lower case, without port or brackets; None if malformed."""
    header = header.strip()
    if not header or len(header) > 300:
        return None
    if header.startswith("["):
        end = header.find("]")
        if end < 0 or (header[end + 1 :] and not header[end + 1 :].startswith(":")):
            return None
        return header[1:end].lower()
    host, _, port = header.partition(":")
    if port and not port.isdigit():
        return None
    return host.lower().rstrip(".")


def own_addresses() -> set[str]:
    """Every address of every interface, loopback included (the API may listen on any)."""
    found = {"127.0.0.1", "::1"}
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            raw = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
            try:
                found.add(str(ipaddress.ip_address(raw.split("%")[0])))
            except ValueError:
                continue
    return found


def own_names(robot_id: str) -> set[str]:
    """The names a client can reach the robot by without anyone else's DNS."""
    hostname = socket.gethostname().lower().rstrip(".")
    short = hostname.split(".")[0]
    names = {"localhost", hostname, short, f"{short}.local", host_name(robot_id).rstrip(".")}
    return {n.lower() for n in names if n}


class HostCheck:
    """Decides whether a Host header names this robot; cheap on the hot path."""

    def __init__(
        self,
        robot_id: str,
        extra: Iterable[str] = (),
        *,
        addresses: Callable[[], set[str]] = own_addresses,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._robot_id = robot_id
        self._extra = {h.lower().rstrip(".") for h in extra}
        self._addresses = addresses
        self._clock = clock
        self._lock = threading.Lock()
        self._known: set[str] = set()
        self._refreshed = -1e9
        self._refresh()

    def _refresh(self) -> None:
        self._known = own_names(self._robot_id) | self._addresses() | self._extra
        self._refreshed = self._clock()

    def allowed(self, header: str | None) -> bool:
        host = split_host(header or "")
        if host is None:
            return False
        with contextlib.suppress(ValueError):  # one spelling per address
            host = str(ipaddress.ip_address(host.split("%")[0]))
        if host in self._known:
            return True
        with self._lock:  # the network may have changed since: look again, not too often
            if self._clock() - self._refreshed >= REFRESH_MIN_S:
                self._refresh()
            return host in self._known


def host_check_for(config: Config, robot_id: str) -> HostCheck:
    return HostCheck(robot_id, config.api.allowed_hosts)

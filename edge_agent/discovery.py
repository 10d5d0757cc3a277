"""mDNS/DNS-SD: advertise the Robot API as ``_continuon._tcp.local.`` and find robots.

The phone app finds the robot by browsing for the service type; what it gets
must be usable, so the advertisement carries the robot's real LAN addresses
(every non-loopback IPv4 and IPv6 address of the interfaces that are up, from
ifaddr) and the API's port, and is re-announced when either changes (DHCP
renewals, Wi-Fi roaming, a cable plugged in) or when the model version changes.

TXT record: ``id`` (robot id), ``model`` (model version, empty without one),
``api`` (Robot API version), ``kind`` (car or arm), ``sw`` (software version).

The API port: the port the Robot API says it listens on (it writes
``<runtime_dir>/api.json``, ``{"host": ..., "port": ...}``, once listening),
else ``api.port`` from the config; with ``api.port: 0`` (a free port picked at
start) nothing is advertised until that file appears.  When ``api.host`` is one
specific address (not ``0.0.0.0`` / ``::``), only that address is advertised:
the API is not reachable on the others.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import logging
import re
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import ifaddr
from zeroconf import BadTypeInNameException, IPVersion, ServiceStateChange
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from brain.config import Config
from brain.interface import BrainInterface, Service
from brain.interface_models import BrainStatus
from common.backoff import Backoff, BackoffPolicy

_log = logging.getLogger(__name__)

SERVICE_TYPE = "_continuon._tcp.local."
API_VERSION = "1"
ENDPOINT_FILE = "api.json"  # written by edge_agent/api/service.py

AddressProvider = Callable[[], list[str]]
PortProvider = Callable[[], int | None]


def _interfaces_up() -> set[str] | None:
    """Names of interfaces that are up (None: cannot tell, keep them all)."""
    try:
        import psutil

        return {name for name, st in psutil.net_if_stats().items() if st.isup}
    except Exception:
        return None


def lan_addresses() -> list[str]:
    """Every non-loopback IPv4/IPv6 address of an up interface; loopback only if that is all.

    IPv4 first, then IPv6, each sorted, so that an unchanged network gives an
    unchanged list (a change is what triggers a re-announcement).
    """
    up = _interfaces_up()
    found: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    loop: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    for adapter in ifaddr.get_adapters():
        if up is not None and adapter.nice_name not in up and adapter.name not in up:
            continue
        for ip in adapter.ips:
            raw = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
            try:
                addr = ipaddress.ip_address(raw.split("%")[0])
            except ValueError:
                continue
            if addr.is_unspecified or addr.is_multicast:
                continue
            (loop if addr.is_loopback else found).add(addr)
    chosen = found or loop or {ipaddress.ip_address("127.0.0.1")}
    v4 = sorted(str(a) for a in chosen if a.version == 4)
    v6 = sorted(str(a) for a in chosen if a.version == 6)
    return v4 + v6


def api_port_provider(config: Config) -> PortProvider:
    """The port the running API reported, else the configured one (None: not known yet)."""
    path = config.runtime_dir() / ENDPOINT_FILE
    configured = config.api.port or None

    def read() -> int | None:
        try:
            port = int(json.loads(path.read_text())["port"])
        except (OSError, ValueError, KeyError, TypeError):
            return configured
        return port if 0 < port < 65536 else configured

    return read


def address_provider(config: Config) -> AddressProvider:
    """LAN addresses, or just the API's own address when it is bound to one."""
    host = config.api.host
    try:
        bound = ipaddress.ip_address(host)
    except ValueError:
        return lan_addresses  # a host name: cannot tell, advertise all
    if bound.is_unspecified:
        return lan_addresses
    return lambda: [str(bound)]


def instance_name(robot_id: str) -> str:
    return f"{robot_id}.{SERVICE_TYPE}"


def host_name(robot_id: str) -> str:
    """A DNS label for the robot's A/AAAA records (robot ids may hold dots and underscores)."""
    label = re.sub(r"[^A-Za-z0-9-]", "-", robot_id).strip("-")[:55] or "robot"
    return f"continuon-{label}.local."


@dataclass(frozen=True)
class Advert:
    addresses: tuple[str, ...]
    port: int
    properties: tuple[tuple[str, str], ...]


class Advertiser:
    """Keeps the advertisement right: registers, re-announces on change, withdraws on stop."""

    def __init__(
        self,
        brain: BrainInterface,
        config: Config,
        *,
        addresses: AddressProvider | None = None,
        port: PortProvider | None = None,
        poll_s: float | None = None,
        interfaces: Any = None,
    ) -> None:
        self.brain = brain
        self.config = config
        self.addresses = addresses or address_provider(config)
        self.port = port or api_port_provider(config)
        self.poll_s = poll_s if poll_s is not None else config.discovery.poll_s
        self.interfaces = interfaces
        self.name = instance_name(brain.robot_id)
        self.current: Advert | None = None
        self.announcements = 0  # register + updates, for status and tests
        self.registered = asyncio.Event()

    def snapshot(self) -> Advert | None:
        port = self.port()
        if not port:
            return None
        try:
            st: BrainStatus | None = self.brain.status()
        except Exception:
            st = None
        props = {
            "id": self.brain.robot_id,
            "model": (st and st.model_version) or "",
            "api": API_VERSION,
            "kind": st.robot_kind if st else "",
            "sw": st.software_version if st else "",
            # The app must know to speak TLS (and then check the pinned fingerprint).
            "scheme": "https" if self.config.api.tls_cert else "http",
        }
        return Advert(tuple(self.addresses()), int(port), tuple(sorted(props.items())))

    def _info(self, ad: Advert) -> AsyncServiceInfo:
        return AsyncServiceInfo(
            SERVICE_TYPE,
            self.name,
            parsed_addresses=list(ad.addresses),
            port=ad.port,
            properties=dict(ad.properties),
            server=host_name(self.brain.robot_id),
        )

    async def _open(self) -> AsyncZeroconf:
        """Zeroconf on all interfaces; waits (never crashes) while multicast is unusable.

        A crashing service would be restarted by the supervisor and, in a loop,
        latch the e-stop: discovery is not worth that.
        """
        kwargs: dict[str, Any] = {"ip_version": IPVersion.All}
        if self.interfaces is not None:
            kwargs["interfaces"] = self.interfaces
        backoff = Backoff(BackoffPolicy(initial_s=1.0, max_s=60.0))
        while True:
            try:
                return AsyncZeroconf(**kwargs)
            except OSError as exc:
                if kwargs["ip_version"] == IPVersion.All:
                    # No IPv6 on this host: IPv4 alone still finds the robot.
                    _log.warning("mDNS over IPv6 unavailable (%s); using IPv4 only", exc)
                    kwargs["ip_version"] = IPVersion.V4Only
                    continue
                delay = backoff.next_delay()
                _log.error("mDNS unavailable (%s); retrying in %.0f s", exc, delay)
                await asyncio.sleep(delay)

    async def run(self) -> None:
        azc = await self._open()
        info: AsyncServiceInfo | None = None
        try:
            while True:
                try:
                    ad = self.snapshot()
                    if ad is not None and ad != self.current:
                        new = self._info(ad)
                        if info is None:
                            await azc.async_register_service(new, allow_name_change=True)
                            self.name = new.name
                            _log.info(
                                "advertising %s on %s port %d",
                                new.name,
                                ", ".join(ad.addresses),
                                ad.port,
                            )
                        else:
                            await azc.async_update_service(new)
                            _log.info(
                                "re-announced %s: %s port %d model %s",
                                new.name,
                                ", ".join(ad.addresses),
                                ad.port,
                                dict(ad.properties)["model"] or "-",
                            )
                        info = new
                        self.current = ad
                        self.announcements += 1
                        self.registered.set()
                except Exception as exc:
                    # Retried at the next poll; a crash loop would latch the e-stop.
                    _log.error("mDNS advertisement failed: %r", exc)
                await asyncio.sleep(self.poll_s)
        finally:
            if info is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(azc.async_unregister_service(info))
            with contextlib.suppress(Exception):
                await asyncio.shield(azc.async_close())


def make_service(brain: BrainInterface, config: Config) -> Service | None:
    if not config.discovery.enabled or not config.api.enabled:
        return None
    return Service(name="discovery", run=Advertiser(brain, config).run)


# ----------------------------------------------------------------------------- browse


@dataclass(frozen=True)
class FoundRobot:
    name: str
    robot_id: str
    addresses: list[str]
    port: int
    model_version: str
    api_version: str
    kind: str
    software_version: str
    host: str
    scheme: str = "http"

    @property
    def url(self) -> str:
        if not self.addresses:
            return ""
        a = self.addresses[0]
        return f"{self.scheme}://{'[' + a + ']' if ':' in a else a}:{self.port}/"


def _text(props: dict[bytes, bytes | None], key: str) -> str:
    v = props.get(key.encode())
    return v.decode(errors="replace") if v else ""


async def browse(
    timeout: float = 3.0, *, interfaces: Any = None, robot_id: str | None = None
) -> list[FoundRobot]:
    """Robots answering on the LAN within ``timeout`` seconds, sorted by robot id.

    With ``robot_id``, returns as soon as that robot is resolved (only it).
    """
    kwargs: dict[str, Any] = {"ip_version": IPVersion.All}
    if interfaces is not None:
        kwargs["interfaces"] = interfaces
    try:
        azc = AsyncZeroconf(**kwargs)
    except OSError:
        kwargs["ip_version"] = IPVersion.V4Only
        azc = AsyncZeroconf(**kwargs)
    names: set[str] = set()

    def on_change(
        zeroconf: Any, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if state_change in (ServiceStateChange.Added, ServiceStateChange.Updated):
            names.add(name)
        else:
            names.discard(name)

    browser = AsyncServiceBrowser(azc.zeroconf, SERVICE_TYPE, handlers=[on_change])
    found: dict[str, FoundRobot] = {}
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for name in list(names - set(found)):
                info = AsyncServiceInfo(SERVICE_TYPE, name)
                left = max(0.2, deadline - loop.time())
                try:
                    ok = await info.async_request(azc.zeroconf, int(min(left, 3.0) * 1000))
                except BadTypeInNameException:
                    continue
                if ok and info.port:
                    props = info.properties or {}
                    found[name] = FoundRobot(
                        name=name,
                        robot_id=_text(props, "id") or name.removesuffix("." + SERVICE_TYPE),
                        addresses=info.parsed_scoped_addresses(),
                        port=info.port,
                        model_version=_text(props, "model"),
                        api_version=_text(props, "api"),
                        kind=_text(props, "kind"),
                        software_version=_text(props, "sw"),
                        host=info.server or "",
                        scheme="https" if _text(props, "scheme") == "https" else "http",
                    )
            if robot_id is not None and any(r.robot_id == robot_id for r in found.values()):
                return [r for r in found.values() if r.robot_id == robot_id]
            if loop.time() >= deadline:
                break
            await asyncio.sleep(0.1)
    finally:
        await browser.async_cancel()
        await azc.async_close()
    return sorted(found.values(), key=lambda r: (r.robot_id, r.name))


# ----------------------------------------------------------------------------- CLI


def register_cli(sub: argparse._SubParsersAction[argparse.ArgumentParser], add_config: Any) -> None:
    p = sub.add_parser("discover", help="list Continuon robots on the LAN (mDNS)")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds to listen (default 3)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cli_discover)


def _cli_discover(args: argparse.Namespace) -> int:
    if not 0 < args.timeout <= 60:
        print("continuon discover: --timeout must be in (0, 60] seconds", file=sys.stderr)
        return 2
    try:
        robots = asyncio.run(browse(args.timeout))
    except OSError as exc:
        print(f"continuon discover: cannot use multicast DNS here: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([{**asdict(r), "url": r.url} for r in robots], indent=2))
        return 0
    if not robots:
        print(f"no robots found in {args.timeout:g} s", file=sys.stderr)
        return 1
    for r in robots:
        model = r.model_version or "no model"
        print(
            f"{r.robot_id:<24} {r.url:<28} {model:<20} api {r.api_version} "
            f"({', '.join(r.addresses)})"
        )
    return 0

"""mDNS discovery with the real python-zeroconf: advertise, browse, re-announce, withdraw.

Advertiser and browser run on this machine over its real interfaces (multicast
loops back to the sender); robot ids are unique per run so that other daemons
advertising on the same LAN (other tests, real robots) cannot confuse the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import threading
import uuid

import psutil
import pytest

from brain.cli import main as continuon
from edge_agent.discovery import (
    API_VERSION,
    Advertiser,
    address_provider,
    api_port_provider,
    browse,
    lan_addresses,
    make_service,
)
from tests.emulation import EMULATED
from tests.network_helpers import FakeBrain, config_for
from tests.waiting import wait_until_async


def unique_id() -> str:
    return f"disc-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def _strip(addrs) -> set[str]:
    return {a.split("%")[0] for a in addrs}


@pytest.fixture(scope="module")
def multicast_ok():
    """Skip (saying why) only if this machine cannot do multicast DNS at all."""
    from zeroconf.asyncio import AsyncZeroconf

    async def probe():
        azc = AsyncZeroconf()
        await azc.async_close()

    try:
        asyncio.run(probe())
    except OSError as exc:
        pytest.skip(f"multicast DNS sockets unavailable on this machine: {exc}")


@pytest.mark.skipif(EMULATED, reason="qemu-user: psutil's interface listing is ENOSYS")
def test_lan_addresses_are_the_up_interfaces_non_loopback_addresses():
    stats = psutil.net_if_stats()
    expected = set()
    for name, addrs in psutil.net_if_addrs().items():
        if not stats.get(name) or not stats[name].isup:
            continue
        for a in addrs:
            if a.family.name not in ("AF_INET", "AF_INET6"):
                continue
            ip = ipaddress.ip_address(a.address.split("%")[0])
            if not ip.is_loopback:
                expected.add(str(ip))
    got = lan_addresses()
    assert len(got) == len(set(got))
    if expected:
        assert set(got) == expected
        assert not any(ipaddress.ip_address(a).is_loopback for a in got)
    else:  # a machine with no network: loopback is all there is
        assert all(ipaddress.ip_address(a).is_loopback for a in got)
    # IPv4 first, each family sorted: an unchanged network gives an unchanged list.
    versions = [ipaddress.ip_address(a).version for a in got]
    assert versions == sorted(versions)


def test_port_and_address_providers(tmp_path):
    cfg = config_for(tmp_path, api={"port": 0})
    port = api_port_provider(cfg)
    assert port() is None  # the API has not said where it listens yet
    cfg.runtime_dir().mkdir(parents=True)
    (cfg.runtime_dir() / "api.json").write_text(json.dumps({"host": "0.0.0.0", "port": 40123}))
    assert port() == 40123
    fixed = config_for(tmp_path / "b", api={"port": 8088})
    assert api_port_provider(fixed)() == 8088
    assert address_provider(fixed) is lan_addresses
    local = config_for(tmp_path / "c", api={"host": "127.0.0.1"})
    assert address_provider(local)() == ["127.0.0.1"]
    assert make_service(FakeBrain(), config_for(tmp_path, discovery={"enabled": False})) is None


async def _find(robot_id: str, timeout: float = 3.0):
    return [r for r in await browse(timeout, robot_id=robot_id) if r.robot_id == robot_id]


@pytest.mark.slow
def test_advertise_browse_reannounce_and_withdraw(tmp_path, multicast_ok):
    rid = unique_id()
    brain = FakeBrain(robot_id=rid)
    real = lan_addresses()
    current = {"addrs": list(real), "calls": 0}

    def addresses() -> list[str]:
        current["calls"] += 1
        if current["calls"] == 1:  # a failure (say, an interface vanishing) is retried
            raise OSError("interface went away")
        return list(current["addrs"])

    adv = Advertiser(
        brain,
        config_for(tmp_path, robot={"id": rid}),
        addresses=addresses,
        port=lambda: 48321,
        poll_s=0.2,
    )

    async def body():
        task = asyncio.create_task(adv.run())
        try:
            await asyncio.wait_for(adv.registered.wait(), 15)
            (found,) = await _find(rid)
            assert found.port == 48321
            assert _strip(found.addresses) == set(real)
            assert found.model_version == "model-1" and found.api_version == API_VERSION
            assert found.kind == "car" and found.software_version == "0.1.0"
            assert found.url.endswith(":48321/")

            # DHCP gave the robot another address, and a new model was installed.
            extra = "192.0.2.77" if "192.0.2.77" not in real else "198.51.100.7"
            current["addrs"] = [*real, extra]
            brain.model_version = "model-2"
            await wait_until_async(lambda: adv.announcements >= 2, timeout=5)
            # The re-announcement reaches a fresh browser (retried: mDNS rate-limits answers).
            found = None
            for _ in range(6):
                hits = await _find(rid)
                if hits and extra in _strip(hits[0].addresses):
                    found = hits[0]
                    break
                await asyncio.sleep(0.5)
            assert found is not None, f"re-announced addresses never seen: {hits}"
            assert _strip(found.addresses) == {*real, extra}
            assert found.model_version == "model-2"
            assert adv.announcements == 2  # one re-announcement for both changes
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # Stopped: the goodbye withdrew it.
        assert await _find(rid, timeout=1.5) == []

    asyncio.run(body())


@pytest.mark.slow
def test_continuon_discover_lists_the_robot(tmp_path, capsys, multicast_ok):
    rid = unique_id()
    adv = Advertiser(
        FakeBrain(robot_id=rid),
        config_for(tmp_path, robot={"id": rid}),
        port=lambda: 48999,
        poll_s=0.5,
    )
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def serve():
        task = asyncio.create_task(adv.run())
        await stop.wait()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    try:
        deadline = loop.time() + 15
        while not adv.registered.is_set():
            assert loop.time() < deadline, "advertiser did not register"
            threading.Event().wait(0.05)
        assert continuon(["discover", "--json", "--timeout", "2"]) == 0
        robots = json.loads(capsys.readouterr().out)
        mine = [r for r in robots if r["robot_id"] == rid]
        assert len(mine) == 1 and mine[0]["port"] == 48999
        assert _strip(mine[0]["addresses"]) == set(lan_addresses())
        assert continuon(["discover", "--timeout", "1.5"]) == 0
        assert rid in capsys.readouterr().out
        assert continuon(["discover", "--timeout", "0"]) == 2
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)

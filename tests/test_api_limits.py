"""Connection limits of the Robot API (edge_agent/api/limits.py) and of the control socket."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

import pytest
from aiohttp import web

from brain.config import ApiConfig
from brain.logs import LogRateLimiter
from edge_agent.api.limits import ConnectionGate, GatedTCPSite
from edge_agent.control_socket import peer_allowed
from tests.api_helpers import running_api
from tests.emulation import wall


@contextlib.asynccontextmanager
async def gated_app(**caps):
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app, keepalive_timeout=caps.pop("keepalive", 15.0))
    await runner.setup()
    gate = ConnectionGate(
        caps.get("total", 8), caps.get("per_client", 3), caps.get("header_timeout", 5.0)
    )
    site = GatedTCPSite(runner, "127.0.0.1", 0, gate)
    await site.start()
    try:
        yield gate, site.bound_port
    finally:
        await runner.cleanup()


async def _connect(port: int, src: str = "127.0.0.1"):
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(src, 0))


async def _get(port: int, src: str = "127.0.0.1") -> bytes:
    r, w = await _connect(port, src)
    w.write(b"GET / HTTP/1.1\r\nHost: robot\r\nConnection: close\r\n\r\n")
    data = await asyncio.wait_for(r.read(), 5)
    w.close()
    return data


async def _refused(port: int, src: str) -> bool:
    """Reset at accept time (connect fails) or closed right after: either way, refused."""
    try:
        r, _ = await _connect(port, src)
    except ConnectionResetError:
        return True
    return await _closed(r, 2.0)


async def _closed(reader: asyncio.StreamReader, within: float) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), within) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_per_client_cap_refuses_only_that_client():
    async def body():
        async with gated_app(total=8, per_client=3) as (gate, port):
            held = [await _connect(port, "127.0.0.2") for _ in range(3)]
            assert await _refused(port, "127.0.0.2")  # the fourth from the same address
            assert gate.refused["per_client"] == 1
            assert b"200 OK" in await _get(port, "127.0.0.3")  # another client is served
            for r, _ in held:
                assert not await _closed(r, 0.05)
            for _, w in held:
                w.close()

    asyncio.run(body())


def test_total_cap_evicts_idle_connections_for_a_real_request():
    async def body():
        async with gated_app(total=4, per_client=4) as (gate, port):
            idle = [await _connect(port, f"127.0.0.{10 + i}") for i in range(4)]
            await asyncio.sleep(0.1)
            assert gate.open_connections == 4
            # the owner's request gets through although every slot was taken by idlers
            assert b"200 OK" in await _get(port, "127.0.0.99")
            assert gate.refused["evicted_idle"] >= 1
            assert await _closed(idle[0][0], 2.0)  # the oldest idle one made room
            assert gate.open_connections <= 4

    asyncio.run(body())


def test_total_cap_refuses_when_every_connection_is_busy():
    async def body():
        async with gated_app(total=2, per_client=2) as (gate, port):
            busy = []
            for i in range(2):  # a request head sent: these count as in use
                r, w = await _connect(port, f"127.0.0.{20 + i}")
                w.write(b"GET / HTTP/1.1\r\nHost: robot\r\n\r\n")
                await r.readuntil(b"ok")
                busy.append((r, w))
            assert await _refused(port, "127.0.0.30")
            assert gate.refused["total"] == 1

    asyncio.run(body())


@pytest.mark.timing
def test_header_deadline_closes_idle_and_slowloris_connections():
    async def body():
        async with gated_app(header_timeout=0.4) as (gate, port):
            r1, _ = await _connect(port)
            r2, w2 = await _connect(port)
            t0 = time.monotonic()
            for byte in b"GET / HTTP/1.1\r\nHo":  # a byte at a time, never finishing
                w2.write(bytes([byte]))
                await asyncio.sleep(0.02)
            assert await _closed(r1, 2.0) and await _closed(r2, 2.0)
            assert time.monotonic() - t0 < wall(1.5)
            assert gate.refused["header_timeout"] == 2
            assert gate.open_connections == 0

    asyncio.run(body())


def test_keepalive_timeout_closes_an_idle_kept_alive_connection():
    async def body():
        async with gated_app(keepalive=0.3) as (_gate, port):
            r, w = await _connect(port)
            w.write(b"GET / HTTP/1.1\r\nHost: robot\r\n\r\n")
            await r.readuntil(b"ok")
            assert await _closed(r, 3.0)

    asyncio.run(body())


def test_rate_limiter_bounds_a_flood_of_identical_messages():
    clock = [0.0]
    lim = LogRateLimiter(interval_s=10.0, burst=3, clock=lambda: clock[0])
    results = [lim.allow("accept EMFILE") for _ in range(10_000)]
    assert sum(ok for ok, _ in results) == 3
    clock[0] = 10.5
    ok, dropped = lim.allow("accept EMFILE")
    assert ok and dropped == 9_997  # the next one written says how many were left out


def test_config_rejects_per_client_cap_above_total():
    with pytest.raises(ValueError, match="max_connections_per_client"):
        ApiConfig(max_connections=8, max_connections_per_client=9)


@pytest.mark.timeout(60)
def test_slow_json_body_gets_408_and_frees_the_slot(tmp_path):
    async def body():
        async with running_api(tmp_path, **{"api.body_timeout_s": 0.3}) as api:
            token = await api.token()
            r = await api.client.post(
                "/api/v1/heartbeat",
                data=_trickle(b'{"x":' + b" " * 40 + b"}", 0.05),
                headers={**api.bearer(token), "Content-Type": "application/json"},
            )
            assert r.status == 408, await r.text()
            assert (await r.json())["error"]["code"] == "body_timeout"

    asyncio.run(body())


async def _trickle(data: bytes, gap: float):
    for i in range(len(data)):
        yield data[i : i + 1]
        await asyncio.sleep(gap)


def test_control_socket_peer_rule():
    assert peer_allowed(0, 12345)  # root
    assert peer_allowed(os.geteuid(), 12345)  # the service user
    assert peer_allowed(54321, os.getegid())  # primary group is the daemon's
    assert not peer_allowed(65534, 65534)  # nobody: not in the daemon's group


def _request_as_nobody(path) -> str:
    """A forked child drops to uid/gid 65534 and asks for MANUAL; returns the raw answer."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(5)
                s.connect(str(path))
                s.sendall(b'{"cmd": "mode", "mode": "manual"}\n')
                os.write(wfd, s.recv(4096))
        except BaseException as exc:
            os.write(wfd, repr(exc).encode())
        os._exit(0)
    os.close(wfd)
    out = b""
    while chunk := os.read(rfd, 4096):
        out += chunk
    os.close(rfd)
    os.waitpid(pid, 0)
    return out.decode()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to connect as another user")
def test_control_socket_refuses_another_user_even_if_the_mode_is_widened(tmp_path):
    """SO_PEERCRED, not the file mode: a chmod 666 does not let user nobody in."""
    from brain.config import parse_config
    from brain.daemon import Daemon
    from edge_agent.control_socket import make_service, request
    from tests.daemon_helpers import sim_config, start_daemon, stop_daemon

    run_dir = Path(tempfile.mkdtemp(prefix="continuon-peercred-"))
    run_dir.chmod(0o755)  # reachable for user nobody: only SO_PEERCRED stands in the way

    async def body():
        cfg = parse_config(sim_config(tmp_path, **{"paths.runtime_dir": str(run_dir)}))
        daemon = Daemon(cfg, services=[make_service])
        task = await start_daemon(daemon)
        path = cfg.runtime_dir() / "control.sock"
        for _ in range(100):
            if path.exists():
                break
            await asyncio.sleep(0.02)
        os.chmod(path, 0o666)  # as if someone widened the file mode
        answer = await asyncio.to_thread(_request_as_nobody, path)
        mine = await asyncio.to_thread(request, path, {"cmd": "status"})
        mode = daemon.modes.mode.value
        await stop_daemon(daemon, task)
        return answer, mine, mode

    try:
        answer, mine, mode = asyncio.run(body())
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    assert "may not use the control socket" in answer, answer
    assert mode == "idle"  # the refused request changed nothing
    assert mine["ok"]  # the daemon's own user is still served


def test_loop_error_log_bounds_a_flood_of_accept_errors(caplog):
    """What asyncio reports when accept() runs out of descriptors, 10,000 times."""
    from brain.logs import LoopErrorLog

    async def body():
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(LoopErrorLog().handle)
        for _ in range(10_000):
            loop.call_exception_handler(
                {
                    "message": "socket.accept() out of system resource",
                    "exception": OSError(24, "Too many open files"),
                }
            )

    with caplog.at_level("ERROR", logger="asyncio"):
        asyncio.run(body())
    records = [r for r in caplog.records if "out of system resource" in r.getMessage()]
    assert len(records) == 3
    assert records[0].exc_info is not None  # the first ones keep asyncio's traceback

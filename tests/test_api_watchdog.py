"""A dropped teleop WebSocket stops the car through the brain's watchdog.

The real daemon on the sim robot runs the real Robot API service (as the
daemon starts it: a supervised service on a TCP port); the client drives
over a real socket, then the link dies.  The actuators (wrapped at the driver
boundary) must go neutral within the 250 ms watchdog plus one control tick.
"""

from __future__ import annotations

import asyncio
import json
import time
from importlib.metadata import entry_points

import aiohttp
import numpy as np
import pytest

from brain.daemon import Daemon
from brain.hardware.devices import open_devices
from edge_agent.api.auth import auth_for
from edge_agent.api.service import ENDPOINT_FILE, make_service
from tests.api_helpers import make_config, ws_protocols
from tests.daemon_helpers import RecordingActuators
from tests.emulation import wall

BOUND_S = 0.250 + 0.050  # teleop_timeout_ms + one tick at 20 Hz


def test_robot_api_is_registered_as_a_daemon_service():
    eps = {e.name: e.value for e in entry_points(group="continuon.services")}
    assert eps.get("robot-api") == "edge_agent.api.service:make_service"


async def _drive_then_drop(tmp_path, how: str):
    cfg = make_config(tmp_path, **{"api.host": "127.0.0.1", "api.port": 0})
    devices = open_devices(cfg)
    act = devices.actuators = RecordingActuators(devices.actuators)
    daemon = Daemon(cfg, devices=devices, services=[make_service])
    task = asyncio.create_task(daemon.run())
    try:
        await daemon.wait_ready(wall(10))
        endpoint = cfg.runtime_dir() / ENDPOINT_FILE
        for _ in range(500):  # the API is listening and the sim has its first camera frame
            if endpoint.exists() and daemon.sensors.latest()[0] is not None:
                break
            await asyncio.sleep(0.02)
        port = json.loads(endpoint.read_text())["port"]
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as http:
            code = auth_for(cfg).pairing.new_code()["code"]
            async with http.post(f"{base}/api/v1/pair", json={"code": code}) as r:
                token = (await r.json())["token"]
            h = {"Authorization": f"Bearer {token}"}
            async with http.post(f"{base}/api/v1/mode", json={"mode": "manual"}, headers=h) as r:
                assert r.status == 200
            ws = await http.ws_connect(f"{base}/api/v1/teleop", protocols=ws_protocols(token))
            last_send = 0.0
            for _ in range(150):  # until the car moves (a loaded machine may give stale frames)
                await ws.send_json({"type": "teleop", "action": [0.3, 0.5]})
                await asyncio.sleep(0.02)
                if any(k == "write" for _, k, _ in act.snapshot()):
                    break
            for _ in range(50):  # 1 s of joystick at 50 Hz
                await ws.send_json({"type": "teleop", "action": [0.3, 0.5]})
                last_send = time.monotonic()
                await asyncio.sleep(0.02)
            if how == "abort":
                ws._conn.transport.abort()  # the TCP link dies (RST), no close handshake
            elif how == "close":
                await ws.close()
            # "silent": the socket stays open but nothing more comes (a frozen phone)
            await asyncio.sleep(0.8)
            mode = daemon.modes.mode.value
            if how == "silent":
                await ws.close()
    finally:
        daemon.request_stop("test")
        await asyncio.wait_for(task, wall(5))
    return act.snapshot(), last_send, mode


@pytest.mark.slow
@pytest.mark.timing
@pytest.mark.parametrize("how", ["abort", "close", "silent"])
def test_dropped_teleop_link_stops_the_car_within_the_watchdog(tmp_path, how):
    calls, last_send, mode = asyncio.run(_drive_then_drop(tmp_path, how))
    writes = [(t, a) for t, k, a in calls if k == "write" and t <= last_send + 0.06]
    assert writes and np.allclose(writes[-1][1], [0.3, 0.5]), "the car was never driven"
    after = [(t, k) for t, k, _ in calls if t > last_send]
    first_neutral = next(t for t, k in after if k == "neutral")
    assert first_neutral - last_send <= wall(BOUND_S), first_neutral - last_send
    assert all(k == "neutral" for t, k in after if t >= first_neutral), "it moved again"
    assert mode == "manual"  # stopped by the watchdog, not by a mode change


def test_daemon_stops_promptly_with_open_streams(tmp_path):
    """SIGTERM-style stop with a teleop socket and both camera streams open: no hang."""

    async def body():
        cfg = make_config(tmp_path, **{"api.host": "127.0.0.1", "api.port": 0})
        daemon = Daemon(cfg, services=[make_service])
        task = asyncio.create_task(daemon.run())
        await daemon.wait_ready(wall(10))
        endpoint = cfg.runtime_dir() / ENDPOINT_FILE
        for _ in range(200):
            if endpoint.exists():
                break
            await asyncio.sleep(0.02)
        base = f"http://127.0.0.1:{json.loads(endpoint.read_text())['port']}"
        async with aiohttp.ClientSession() as http:
            token, _ = auth_for(cfg).tokens.issue("t")
            h = {"Authorization": f"Bearer {token}"}
            ws = await http.ws_connect(f"{base}/api/v1/teleop", protocols=ws_protocols(token))
            cam = await http.ws_connect(f"{base}/api/v1/camera", protocols=ws_protocols(token))
            mjpg = await http.get(f"{base}/api/v1/camera.mjpg", headers=h)
            assert mjpg.status == 200
            await cam.receive(timeout=5)
            t0 = time.monotonic()
            daemon.request_stop("test")
            await asyncio.wait_for(task, wall(10))
            took = time.monotonic() - t0
            while (msg := await ws.receive(timeout=2)).type == aiohttp.WSMsgType.TEXT:
                pass  # telemetry sent before the stop
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            mjpg.close()
        assert not endpoint.exists()
        return took

    took = asyncio.run(body())
    assert took < 4.0, took

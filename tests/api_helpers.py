"""Shared set-up for the Robot API tests: the real daemon on the sim robot plus the real app.

The daemon runs in the test's event loop (as in tests/test_daemon.py) with its
actuators wrapped at the driver boundary so every write is timestamped; the API
app is served by aiohttp's TestServer on a loopback port.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from brain.config import Config, parse_config
from brain.daemon import Daemon
from brain.hardware.devices import open_devices
from edge_agent.api.app import create_app
from edge_agent.api.auth import Auth, auth_for
from tests import emulation
from tests.daemon_helpers import RecordingActuators, sim_config


@dataclass
class Api:
    client: TestClient
    daemon: Daemon
    auth: Auth
    config: Config
    actuators: RecordingActuators

    async def token(self, name: str = "test phone") -> str:
        code = self.auth.pairing.new_code()["code"]
        resp = await self.client.post("/api/v1/pair", json={"code": code, "name": name})
        assert resp.status == 200, await resp.text()
        return (await resp.json())["token"]

    @staticmethod
    def bearer(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}


def make_config(tmp_path: Path, **overrides: Any) -> Config:
    return parse_config(sim_config(tmp_path, **{"safety.slew_per_s": {}, **overrides}))


@contextlib.asynccontextmanager
async def running_api(
    tmp_path: Path,
    *,
    brain_wrapper: Any = None,
    clock: Any = None,
    wall: Any = None,
    **overrides: Any,
):
    cfg = make_config(tmp_path, **overrides)
    devices = open_devices(cfg)
    devices.actuators = RecordingActuators(devices.actuators)
    daemon = Daemon(cfg, devices=devices, services=[])
    task = asyncio.create_task(daemon.run())
    try:
        await daemon.wait_ready(emulation.wall(10))
        for _ in range(500):  # the sim builds its textures before the first frame
            if daemon.sensors.latest()[0] is not None:
                break
            await asyncio.sleep(0.01)
        # shared with the control socket
        auth = auth_for(cfg, clock=clock or time.monotonic, wall=wall or time.time)
        brain = brain_wrapper(daemon.brain) if brain_wrapper else daemon.brain
        app = create_app(brain, cfg, auth=auth)
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            yield Api(client, daemon, auth, cfg, devices.actuators)
    finally:
        daemon.request_stop("test")
        await asyncio.wait_for(task, emulation.wall(5))


def ws_protocols(token: str | None) -> tuple[str, ...]:
    return ("continuon.v1", f"bearer.{token}") if token else ("continuon.v1",)

"""The Robot API as a supervised service of the daemon (``continuon.services`` entry point)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os

from aiohttp import web

from brain.config import Config
from brain.interface import BrainInterface, Service
from edge_agent.api.app import create_app
from edge_agent.api.auth import auth_for
from edge_agent.api.limits import ConnectionGate, GatedTCPSite

_log = logging.getLogger("continuon.api")

ENDPOINT_FILE = "api.json"  # <runtime_dir>/api.json: where the API really listens


def make_service(brain: BrainInterface, config: Config) -> Service | None:
    if not config.api.enabled:
        return None
    return Service(name="robot-api", run=lambda: serve(brain, config))


async def serve(brain: BrainInterface, config: Config) -> None:
    auth = auth_for(config)
    app = create_app(brain, config, auth=auth)
    api = config.api
    runner = web.AppRunner(
        app, access_log=None, shutdown_timeout=1.0, keepalive_timeout=api.keepalive_timeout_s
    )
    await runner.setup()
    endpoint = config.runtime_dir() / ENDPOINT_FILE
    try:
        gate = ConnectionGate.from_config(api)
        site = GatedTCPSite(runner, api.host, api.port, gate)
        await site.start()
        port = runner.addresses[0][1] if runner.addresses else config.api.port  # api.port 0
        endpoint.parent.mkdir(parents=True, exist_ok=True)
        endpoint.write_text(json.dumps({"host": config.api.host, "port": port}))
        _log.info("Robot API listening on %s:%d", config.api.host, port)
        if not auth.tokens.list():
            # First boot: nobody owns the robot yet, so the log shows a code to pair with.
            auth.pairing.new_code()
        await asyncio.Event().wait()
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(endpoint)
        await runner.cleanup()

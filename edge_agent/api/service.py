"""The Robot API as a supervised service of the daemon (``continuon.services`` entry point)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

from aiohttp import web

from brain.config import Config
from brain.interface import BrainInterface, Service
from common.durable import write_json
from edge_agent.api.app import create_app
from edge_agent.api.auth import auth_for
from edge_agent.api.limits import ConnectionGate, GatedTCPSite
from edge_agent.api.tls import server_tls_context

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
        ssl_ctx = server_tls_context(api)
        gate = ConnectionGate.from_config(api)
        site = GatedTCPSite(runner, api.host, api.port, gate, ssl_context=ssl_ctx)
        await site.start()
        port = runner.addresses[0][1] if runner.addresses else config.api.port  # api.port 0
        scheme = "https" if ssl_ctx else "http"
        endpoint.parent.mkdir(parents=True, exist_ok=True)
        where = {"host": config.api.host, "port": port, "scheme": scheme}
        await asyncio.to_thread(write_json, endpoint, where, sort_keys=False)
        _log.info("Robot API listening on %s://%s:%d", scheme, config.api.host, port)
        if not auth.tokens.list():
            # Codes are never logged (anyone who reads the journal could pair): say how.
            _log.info("no device is paired yet: run `continuon pair` on the robot")
        await asyncio.Event().wait()
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(endpoint)
        await runner.cleanup()

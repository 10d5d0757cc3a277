"""Typed keys for what the Robot API keeps on its aiohttp Application."""

from __future__ import annotations

import asyncio
import weakref
from typing import TYPE_CHECKING

from aiohttp import web

from brain.config import Config
from brain.interface import BrainInterface

if TYPE_CHECKING:
    from edge_agent.api.auth import Auth
    from edge_agent.api.hosts import HostCheck
    from edge_agent.api.streams import Budgets, FrameEncoder

BRAIN: web.AppKey[BrainInterface] = web.AppKey("brain", BrainInterface)
CONFIG: web.AppKey[Config] = web.AppKey("config", Config)
AUTH: web.AppKey[Auth] = web.AppKey("auth")
ENCODER: web.AppKey[FrameEncoder] = web.AppKey("encoder")
HOSTS: web.AppKey[HostCheck] = web.AppKey("hosts")
WS_BUDGETS: web.AppKey[Budgets] = web.AppKey("ws_budgets")
CLOSING: web.AppKey[asyncio.Event] = web.AppKey("closing", asyncio.Event)
WEBSOCKETS: web.AppKey[weakref.WeakSet[web.WebSocketResponse]] = web.AppKey("websockets")
TOKEN_ID: web.RequestKey[str] = web.RequestKey("token_id", str)
UPLOAD_LOCK: web.AppKey[asyncio.Lock] = web.AppKey("upload_lock", asyncio.Lock)

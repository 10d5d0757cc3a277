"""The Robot API application: routes, the auth gate and JSON errors.

Auth is default-deny: a route is public only if it is in ``routes.PUBLIC``;
every other route, including any added later, needs an owner token.  There is
no exemption for loopback clients or for any header (X-Forwarded-For and the
like are never read), because on a robot "local" can be a compromised
neighbour process as easily as the owner.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from urllib.parse import urlsplit

from aiohttp import WSCloseCode, web
from pydantic import ValidationError

from brain.config import Config
from brain.interface import BrainInterface, CommandError, NotFound
from edge_agent.api.auth import Auth
from edge_agent.api.hosts import host_check_for
from edge_agent.api.keys import (
    AUTH,
    BRAIN,
    CLOSING,
    CONFIG,
    ENCODER,
    HOSTS,
    TOKEN_ID,
    UPLOAD_LOCK,
    WEBSOCKETS,
    WS_BUDGETS,
)
from edge_agent.api.models import ApiError, error_response, validation_message
from edge_agent.api.routes import PUBLIC, ROUTES, SPECS, RouteSpec
from edge_agent.api.streams import Budgets, FrameEncoder

_log = logging.getLogger("continuon.api")

BEARER_PREFIX = "bearer."

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "timeout",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_body",
    429: "rate_limited",
}


@web.middleware
async def error_middleware(request: web.Request, handler):  # type: ignore[no-untyped-def]
    """Every failure becomes {"error": {"code", "message"}}; bad input never becomes a 500."""
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message, exc.headers)
    except NotFound as exc:
        return error_response(404, "not_found", str(exc))
    except CommandError as exc:
        return error_response(409, "refused", str(exc))
    except ValidationError as exc:
        return error_response(422, "invalid_body", validation_message(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        if exc.status == 413:
            message = f"the body is too large (limit {request.app[CONFIG].api.max_body_bytes} B)"
        elif exc.status == 405:
            message = f"{request.method} is not allowed on {request.path}"
        elif exc.status == 404:
            message = f"no route {request.path}"
        else:
            message = exc.reason
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return error_response(exc.status, code, message, headers)
    except (asyncio.CancelledError, ConnectionError):
        raise
    except Exception:
        _log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(500, "internal", "internal error; see the robot's log")


def _spec_of(request: web.Request) -> RouteSpec | None:
    route = request.match_info.route
    resource = route.resource
    if resource is None:
        return None
    return SPECS.get((route.method, resource.canonical))


def bearer_from(request: web.Request, spec: RouteSpec) -> str | None:
    """The token from Authorization, or (WebSocket) from the offered subprotocols."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if spec.kind == "websocket":
        for field in request.headers.getall("Sec-WebSocket-Protocol", []):
            for proto in field.split(","):
                proto = proto.strip()
                if proto.startswith(BEARER_PREFIX):
                    return proto[len(BEARER_PREFIX) :]
    return None


def origin_allowed(request: web.Request, config: Config) -> bool:
    """Same origin as the Host the client used (itself checked), or one of api.allowed_origins."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True  # not a browser; such clients are still held to the token
    if origin in config.api.allowed_origins:
        return True
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False  # "null" and other opaque origins
    host = request.headers.get("Host", "")
    return parts.netloc.lower() == host.lower()


@web.middleware
async def auth_middleware(request: web.Request, handler):  # type: ignore[no-untyped-def]
    if not request.app[HOSTS].allowed(request.headers.get("Host")):
        # Before anything else, public routes and 404s included: a DNS-rebound page must
        # learn nothing.  421: the request was not meant for this server.
        raise ApiError(
            421,
            "bad_host",
            "the Host header does not name this robot; use its address or name "
            "(or add the name to api.allowed_hosts)",
        )
    match_exc = request.match_info.http_exception
    if match_exc is not None:
        raise match_exc  # 404/405 before anything else; no handler runs
    spec = _spec_of(request)
    key = (request.method, spec.canonical) if spec else None
    config = request.app[CONFIG]
    if spec is None:
        raise ApiError(404, "not_found", f"no route {request.path}")
    if key in PUBLIC:
        if request.method != "GET" and not origin_allowed(request, config):
            raise ApiError(403, "bad_origin", "requests from this web origin are not allowed")
        return await handler(request)
    auth: Auth = request.app[AUTH]
    token = bearer_from(request, spec)
    token_id: str | None = None
    if token is not None:
        rec = auth.tokens.verify(token)
        token_id = rec.token_id if rec else None
    elif spec.kind == "mjpeg" and "ticket" in request.query:
        token_id = auth.tickets.check(request.query["ticket"])
        if token_id is not None and not auth.tokens.is_live(token_id):
            token_id = None
    if token_id is None:
        what = "missing" if token is None and "ticket" not in request.query else "invalid"
        raise ApiError(
            401,
            "unauthorized",
            f"owner token {what}; pair with the robot and send Authorization: Bearer <token>",
            {"WWW-Authenticate": 'Bearer realm="continuon"'},
        )
    if not origin_allowed(request, config):
        raise ApiError(403, "bad_origin", "requests from this web origin are not allowed")
    request[TOKEN_ID] = token_id
    return await handler(request)


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    h = response.headers
    h.setdefault("X-Content-Type-Options", "nosniff")
    h.setdefault("X-Frame-Options", "DENY")  # an e-stop page must not be framed
    h.setdefault("Referrer-Policy", "no-referrer")  # stream tickets travel in URLs
    h.setdefault("Content-Security-Policy", "frame-ancestors 'none'")
    if request.path.startswith("/api/") and "Cache-Control" not in h:
        h["Cache-Control"] = "no-store"


async def _on_shutdown(app: web.Application) -> None:
    app[CLOSING].set()
    open_sockets = app[WEBSOCKETS]
    for ws in list(open_sockets):
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"robot shutting down")


def create_app(brain: BrainInterface, config: Config, *, auth: Auth) -> web.Application:
    app = web.Application(
        middlewares=[error_middleware, auth_middleware],
        client_max_size=config.api.max_body_bytes,
    )
    app[BRAIN] = brain
    app[CONFIG] = config
    app[AUTH] = auth
    app[HOSTS] = host_check_for(config, brain.robot_id)
    app[ENCODER] = FrameEncoder(brain, config.api.camera_jpeg_quality)
    app[CLOSING] = asyncio.Event()
    app[WEBSOCKETS] = weakref.WeakSet()
    app[WS_BUDGETS] = Budgets(config.api.ws_max_msgs_per_s)
    app[UPLOAD_LOCK] = asyncio.Lock()
    for spec in ROUTES:
        app.router.add_route(spec.method, spec.path, spec.handler, name=None)
    app.on_response_prepare.append(_security_headers)
    app.on_shutdown.append(_on_shutdown)
    return app

"""Request bodies and the JSON error shape of the Robot API.

Bodies are validated strictly (no "1" for 1, no unknown fields, no NaN) so
that a typo in a client shows up as a 422 naming the field instead of as a
surprise on the robot.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any, Literal, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from brain.localtrain.options import StartOptions
from edge_agent.api.keys import CONFIG

M = TypeVar("M", bound=BaseModel)

TAG = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:=-]{1,64}$")]
REASON = Annotated[str, Field(max_length=200)]


class ApiError(Exception):
    """Becomes {"error": {"code", "message"}} with ``status``."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    from edge_agent.api.redact import redact_paths

    return web.json_response(
        {"error": {"code": code, "message": redact_paths(message)}}, status=status, headers=headers
    )


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)


class PairBody(_Body):
    code: Annotated[str, Field(pattern=r"^[0-9]{4}[ -]?[0-9]{4}[ -]?[0-9]{4}$")]
    name: Annotated[str, Field(max_length=64)] = "owner"  # blank: "owner"


class ModeBody(_Body):
    mode: Literal["idle", "manual", "autonomous", "training"]
    reason: REASON = "api"


class EstopBody(_Body):
    reason: REASON = "api"


class RecordingStartBody(_Body):
    tags: Annotated[list[TAG], Field(max_length=16)] | None = None


class ExportBody(_Body):
    format: Literal["rlds", "lerobot"] = "rlds"
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0
    # train,val,test fractions, e.g. "0.8,0.1,0.1"
    split: Annotated[str, Field(pattern=r"^[0-9., ]{1,64}$")] | None = None


# The local trainer's own options model (strict, bounded, no paths, no run id): the API
# refuses a bad body with 422 before the brain sees it, and the trainer checks it again
# against the config's floors.
TrainingStartBody = StartOptions


class Empty(_Body):
    pass


# -- WebSocket messages (teleop) ------------------------------------------------------------


class TeleopMsg(_Body):
    type: Literal["teleop"]
    action: Annotated[list[float], Field(min_length=1, max_length=16)]


class EstopMsg(_Body):
    type: Literal["estop"]
    reason: REASON = "app e-stop"


class PingMsg(_Body):
    type: Literal["ping"]


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def decode_json(raw: bytes | str) -> Any:
    """JSON without NaN/Infinity; ApiError 400 naming the problem."""
    try:
        return json.loads(raw, parse_constant=_no_constants)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, "bad_json", f"the body is not valid JSON: {exc}") from None


def validation_message(exc: ValidationError) -> str:
    parts = []
    for e in exc.errors()[:5]:
        loc = ".".join(str(x) for x in e["loc"]) or "body"
        parts.append(f"{loc}: {e['msg']}")
    return "; ".join(parts)


def parse_model(model: type[M], data: Any) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError(422, "invalid_body", validation_message(exc)) from None


async def read_body(request: web.Request, model: type[M]) -> M:
    """Reads a JSON body (empty means {}) within client_max_size and validates it."""
    limit_s = request.app[CONFIG].api.body_timeout_s
    try:
        async with asyncio.timeout(limit_s):  # a body trickled in byte by byte holds a slot
            raw = await request.read()  # HTTPRequestEntityTooLarge past client_max_size
    except TimeoutError:
        raise ApiError(408, "body_timeout", f"the body did not arrive within {limit_s} s") from None
    if not raw.strip():
        data: Any = {}
    else:
        if "Content-Type" in request.headers and request.content_type != "application/json":
            raise ApiError(
                415,
                "unsupported_media_type",
                f"send the body as application/json, not {request.content_type}",
            )
        data = decode_json(raw)
    return parse_model(model, data)

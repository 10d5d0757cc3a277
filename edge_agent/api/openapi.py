"""The OpenAPI 3.1 document, generated from the same route table as the router."""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the route table hands itself in: routes.py imports this module
    from edge_agent.api.routes import RouteSpec

_ERROR = {"$ref": "#/components/schemas/Error"}


def _error_responses(spec: RouteSpec, public: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    codes = ["400", "404", "409", "413", "415", "422"] if spec.body or spec.kind == "upload" else []
    if spec.kind == "upload":
        codes.append("408")  # the body stalled or took too long
    if spec.method == "DELETE":
        codes.append("404")
    if not public:
        codes += ["401", "403"]
    if spec.canonical == "/api/v1/pair":
        codes += ["401", "403", "429"]
    for c in sorted(set(codes)):
        out[c] = {
            "description": "error",
            "content": {"application/json": {"schema": _ERROR}},
        }
    return out


def build_openapi(
    routes: tuple[RouteSpec, ...], public_routes: Collection[tuple[str, str]], version: str
) -> dict[str, Any]:
    schemas: dict[str, Any] = {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                }
            },
        }
    }
    paths: dict[str, dict[str, Any]] = {}
    for spec in routes:
        public = (spec.method, spec.canonical) in public_routes
        op: dict[str, Any] = {
            "summary": spec.summary,
            "operationId": spec.handler.__name__,
            "security": [] if public else [{"bearer": []}],
            "responses": {"200": {"description": "ok"}, **_error_responses(spec, public)},
        }
        params = [
            {"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
            for n in re.findall(r"\{(\w+)\}", spec.canonical)
        ]
        if spec.kind == "mjpeg":
            op["security"] = [{"bearer": []}, {"ticket": []}]
            op["responses"]["200"] = {
                "description": "MJPEG stream",
                "content": {"multipart/x-mixed-replace": {}},
            }
        if spec.kind == "websocket":
            op["responses"] = {
                "101": {"description": "WebSocket upgrade (subprotocol continuon.v1)"},
                "401": op["responses"]["401"],
                "403": op["responses"]["403"],
            }
            op["x-websocket"] = True
            op["description"] = (
                "Offer Sec-WebSocket-Protocol: continuon.v1, bearer.<token>; the server "
                "answers continuon.v1."
            )
        if params:
            op["parameters"] = params
        if spec.body is not None:
            schema = spec.body.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(schema.pop("$defs", {}))
            schemas[spec.body.__name__] = schema
            op["requestBody"] = {
                "required": False,
                "content": {
                    "application/json": {
                        "schema": {"$ref": f"#/components/schemas/{spec.body.__name__}"}
                    }
                },
            }
        if spec.kind == "upload":
            op["requestBody"] = {
                "required": True,
                "content": {
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
                },
            }
        paths.setdefault(spec.canonical, {})[spec.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "Continuon Robot API", "version": version},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "ticket": {"type": "apiKey", "in": "query", "name": "ticket"},
            },
        },
    }

"""Robot API auth: non-public routes refuse without a valid token; pairing; tokens; origins."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import stat

import aiohttp
import pytest

from brain.cli import main as cli_main
from brain.daemon import Daemon
from edge_agent.api.app import create_app
from edge_agent.api.auth import Auth, TokenStore, tokens_path
from edge_agent.api.routes import PUBLIC
from edge_agent.control_socket import handle_request
from tests.api_helpers import Api, make_config, running_api, ws_protocols

# The ONLY routes reachable without a token.  Keep this list short and explicit: a new
# route is private unless someone adds it here AND to routes.PUBLIC.
ALLOWLIST = {
    ("GET", "/"),
    ("GET", "/static/{path}"),
    ("GET", "/openapi.json"),
    ("GET", "/api/v1/health"),
    ("POST", "/api/v1/pair"),
}


class SpyBrain:
    """The real brain, with a record of every method called through the API."""

    def __init__(self, inner):
        self._inner = inner
        self.calls: list[str] = []

    def __getattr__(self, name):
        value = getattr(self._inner, name)
        if callable(value):

            def wrapped(*a, **k):
                self.calls.append(name)
                return value(*a, **k)

            return wrapped
        return value


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x1", path)


def _private_routes(app) -> list[tuple[str, str, str]]:
    out = []
    for route in app.router.routes():
        canonical = route.resource.canonical
        if (route.method, canonical) in ALLOWLIST:
            continue
        out.append((route.method, canonical, _concrete(canonical)))
    return out


def test_public_set_is_the_allowlist():
    assert set(PUBLIC) == ALLOWLIST


def test_every_private_route_refuses_without_a_valid_token(tmp_path):
    async def body():
        spy = None

        def wrap(brain):
            nonlocal spy
            spy = SpyBrain(brain)
            return spy

        async with running_api(tmp_path, brain_wrapper=wrap) as api:
            c = api.client
            routes = _private_routes(c.server.app)
            # sanity: the enumeration really sees the robot-moving routes
            names = {p for _, p, _ in routes}
            assert {"/api/v1/mode", "/api/v1/teleop", "/api/v1/estop"} <= names
            assert len(routes) >= 20
            revoked = await api.token("old phone")
            api.auth.tokens.revoke(api.auth.tokens.list()[0]["token_id"])
            bad_headers = [
                {},
                {"Authorization": "Bearer not-a-token"},
                {"Authorization": f"Bearer {revoked}"},
                {"Authorization": f"Basic {revoked}"},
                # no header makes a request trusted, loopback included (this client IS loopback)
                {"X-Forwarded-For": "127.0.0.1", "X-Real-IP": "127.0.0.1", "Forwarded": "for=::1"},
                {"Authorization": "Bearer "},
            ]
            spy.calls.clear()
            for method, canonical, path in routes:
                for headers in bad_headers:
                    resp = await c.request(
                        method, path, headers=headers, data=b'{"mode": "manual"}'
                    )
                    assert resp.status == 401, (method, canonical, headers, resp.status)
                    err = (await resp.json())["error"]
                    assert err["code"] == "unauthorized" and err["message"]
                # the WebSocket way of carrying a token is refused the same way
                for protos in (ws_protocols(None), ws_protocols("bogus"), ws_protocols(revoked)):
                    resp = await c.request(
                        method,
                        path,
                        headers={
                            "Connection": "Upgrade",
                            "Upgrade": "websocket",
                            "Sec-WebSocket-Version": "13",
                            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                            "Sec-WebSocket-Protocol": ", ".join(protos),
                        },
                    )
                    assert resp.status == 401, (method, canonical, protos)
                # a stream ticket only opens the MJPEG stream, and a made-up one nothing
                resp = await c.request(method, path + "?ticket=made-up")
                assert resp.status == 401
            assert spy.calls == [], f"the brain was reached without a token: {spy.calls}"
            # and with a valid token the same routes are no longer refused for auth
            good = api.bearer(await api.token())
            for method, canonical, path in routes:
                if canonical in ("/api/v1/teleop", "/api/v1/camera", "/api/v1/camera.mjpg"):
                    continue  # streams: see the stream tests
                resp = await c.request(method, path, headers=good)
                assert resp.status not in (401, 403, 500), (method, canonical, resp.status)

    asyncio.run(body())


def test_websocket_needs_token_and_checks_origin(tmp_path):
    async def body():
        async with running_api(
            tmp_path, **{"api.allowed_origins": ["http://dev.local:3000"]}
        ) as api:
            c = api.client
            tok = await api.token()
            with pytest.raises(aiohttp.WSServerHandshakeError) as e:
                await c.ws_connect("/api/v1/teleop", protocols=ws_protocols(None))
            assert e.value.status == 401
            host = f"{c.server.host}:{c.server.port}"
            for origin in ("http://evil.example", "null", f"https://{host}.evil", "file://"):
                with pytest.raises(aiohttp.WSServerHandshakeError) as e:
                    await c.ws_connect("/api/v1/teleop", protocols=ws_protocols(tok), origin=origin)
                assert e.value.status == 403, origin
            # same origin, a configured origin, and no Origin (a non-browser client) with a token
            for origin in (f"http://{host}", "http://dev.local:3000", None):
                ws = await c.ws_connect(
                    "/api/v1/teleop", protocols=ws_protocols(tok), origin=origin
                )
                assert ws.protocol == "continuon.v1"
                msg = await ws.receive_json(timeout=2)
                assert msg["type"] == "telemetry"
                await ws.close()
            # a cross-origin page cannot drive the REST side either, even holding a token
            resp = await c.post(
                "/api/v1/estop",
                json={},
                headers={**api.bearer(tok), "Origin": "http://evil.example"},
            )
            assert resp.status == 403
            resp = await c.post(
                "/api/v1/pair",
                json={"code": "1234-5678-9012"},
                headers={"Origin": "http://evil.example"},
            )
            assert resp.status == 403

    asyncio.run(body())


class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def wrong_code(code: str) -> str:
    """A well-formed code that is not ``code``."""
    digits = code.replace("-", "")
    return f"{(int(digits) + 1) % 10**12:012d}"


async def _pair(api: Api, code: str, ip: str | None = None):
    resp = await api.client.post("/api/v1/pair", json={"code": code, "name": "phone"})
    return resp.status, await resp.json()


def test_pairing_expiry_single_use_lockout_and_hashed_storage(tmp_path):
    clock = FakeClock()

    async def body():
        async with running_api(tmp_path, clock=clock) as api:
            # expiry
            code = api.auth.pairing.new_code()["code"]
            clock.t += 301
            status, err = await _pair(api, code)
            assert status == 401 and "no pairing code is active" in err["error"]["message"]
            # single use
            code = api.auth.pairing.new_code()["code"]
            status, ok = await _pair(api, code)
            assert status == 200 and len(ok["token"]) >= 43 and ok["token_id"]
            status, _ = await _pair(api, code)
            assert status == 401
            # wrong codes back off only this address, and the code survives them
            code = api.auth.pairing.new_code()["code"]
            wrong = wrong_code(code)
            statuses = [(await _pair(api, wrong))[0] for _ in range(4)]
            assert statuses == [401] * 4  # with the reused code above: 5 failures, now it waits
            status, err = await _pair(api, code)
            assert status == 429 and err["error"]["code"] == "rate_limited"
            clock.t += 2.1  # the first back-off (2 s) passes
            status, ok2 = await _pair(api, code)
            assert status == 200
            # malformed codes are input errors, not attempts
            status, err = await _pair(api, "12345")
            assert status == 422 and "code" in err["error"]["message"]
            return ok["token"], ok2["token"]

    t1, t2 = asyncio.run(body())
    path = tmp_path / "state" / "edge" / "tokens.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert t1 not in text and t2 not in text
    stored = {r["hash"] for r in json.loads(text)["tokens"]}
    assert stored == {hashlib.sha256(t.encode()).hexdigest() for t in (t1, t2)}
    assert not list(path.parent.glob(".tokens.*.tmp"))


def test_pairing_rate_limit_per_address(tmp_path):
    clock = FakeClock()

    async def body():
        async with running_api(
            tmp_path, clock=clock, **{"api.pairing_rate_per_min": 3, "api.pairing_max_failures": 20}
        ) as api:
            api.auth.pairing.new_code()
            got = [(await _pair(api, "0000-0000-0000"))[0] for _ in range(4)]
            # (the code is random; 0000-0000-0000 is right once in 10**12 runs)
            assert got[3] == 429
            resp = await api.client.post("/api/v1/pair", json={"code": "0000-0000-0000"})
            assert resp.status == 429 and int(resp.headers["Retry-After"]) >= 1
            clock.t += 61
            assert (await _pair(api, "0000-0000-0000"))[0] in (200, 401)

    asyncio.run(body())


def test_revoke_stops_requests_and_open_streams(tmp_path):
    async def body():
        async with running_api(tmp_path) as api:
            c = api.client
            tok = await api.token("lost phone")
            assert (await c.get("/api/v1/status", headers=api.bearer(tok))).status == 200
            [rec] = api.auth.tokens.list()
            assert rec["name"] == "lost phone" and rec["last_used"] is not None
            ws = await c.ws_connect("/api/v1/teleop", protocols=ws_protocols(tok))
            await ws.receive_json(timeout=2)
            cam = await c.ws_connect("/api/v1/camera", protocols=ws_protocols(tok))
            # revoke through the control socket's command handler, as `continuon tokens revoke`
            out = handle_request(
                api.daemon.brain,
                {"cmd": "tokens", "action": "revoke", "token_id": rec["token_id"]},
                api.config,
            )
            assert out == {"ok": True, "result": {"revoked": rec["token_id"]}}
            for sock in (ws, cam):
                while True:
                    msg = await sock.receive(timeout=2)
                    if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                        break
                assert sock.close_code == 4401
            resp = await c.get("/api/v1/status", headers=api.bearer(tok))
            assert resp.status == 401

    asyncio.run(body())


def test_control_socket_pair_and_tokens_commands(tmp_path):
    cfg = make_config(tmp_path)
    daemon = Daemon(cfg, services=[])
    out = handle_request(daemon.brain, {"cmd": "pair"}, cfg)
    assert out["ok"] and re.fullmatch(r"\d{4}-\d{4}-\d{4}", out["result"]["code"])
    assert out["result"]["expires_in_s"] == 300
    from edge_agent.api.auth import auth_for

    auth = auth_for(cfg)
    token, rec = auth.pair(out["result"]["code"], "cli phone", "127.0.0.1")
    listed = handle_request(daemon.brain, {"cmd": "tokens", "action": "list"}, cfg)
    assert [t["token_id"] for t in listed["result"]] == [rec.token_id]
    assert "hash" not in listed["result"][0]
    bad = handle_request(daemon.brain, {"cmd": "tokens", "action": "revoke", "token_id": "zz"}, cfg)
    assert not bad["ok"] and "no token" in bad["error"]
    ok = handle_request(
        daemon.brain, {"cmd": "tokens", "action": "revoke", "token_id": rec.token_id}, cfg
    )
    assert ok["ok"] and auth.tokens.verify(token) is None
    assert TokenStore(tokens_path(cfg)).list() == []
    off = make_config(tmp_path / "off", **{"api.enabled": False})
    assert "disabled" in handle_request(daemon.brain, {"cmd": "pair"}, off)["error"]


def test_tokens_cli_works_without_a_daemon(tmp_path, capsys):
    cfg = make_config(tmp_path)
    path = tmp_path / "robot.yaml"
    import yaml

    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    _, rec = TokenStore(tokens_path(cfg)).issue("tablet")
    assert cli_main(["tokens", "list", "--config", str(path)]) == 0
    assert rec.token_id in capsys.readouterr().out
    assert cli_main(["tokens", "revoke", rec.token_id, "--config", str(path)]) == 0
    assert TokenStore(tokens_path(cfg)).list() == []
    assert cli_main(["tokens", "revoke", rec.token_id, "--config", str(path)]) == 1
    assert cli_main(["pair", "--config", str(path)]) == 2  # no daemon: says so, exit 2
    assert "no daemon" in capsys.readouterr().err


def test_corrupt_token_store_is_kept_aside_not_overwritten(tmp_path):
    path = tmp_path / "edge" / "tokens.json"
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    store = TokenStore(path)
    assert store.list() == []
    kept = list(path.parent.glob("tokens.json.corrupt-*"))
    assert len(kept) == 1 and kept[0].read_text() == "{not json"


def test_stream_ticket_opens_only_mjpeg_and_expires(tmp_path):
    clock = FakeClock()

    async def body():
        async with running_api(tmp_path, clock=clock) as api:
            c = api.client
            tok = await api.token()
            resp = await c.post("/api/v1/stream-ticket", headers=api.bearer(tok))
            ticket = (await resp.json())["ticket"]
            resp = await c.get(f"/api/v1/status?ticket={ticket}")
            assert resp.status == 401
            resp = await c.get(f"/api/v1/camera.mjpg?ticket={ticket}")
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("multipart/x-mixed-replace")
            resp.close()
            clock.t += 61
            resp = await c.get(f"/api/v1/camera.mjpg?ticket={ticket}")
            assert resp.status == 401

    asyncio.run(body())


def test_app_requires_auth_object_and_shares_nothing_between_robots(tmp_path):
    a = Auth(make_config(tmp_path / "a"))
    b = Auth(make_config(tmp_path / "b"))
    token, _ = a.tokens.issue("x")
    assert a.tokens.verify(token) is not None and b.tokens.verify(token) is None
    with pytest.raises(TypeError):
        create_app(None, make_config(tmp_path / "c"))  # auth is keyword-only and required

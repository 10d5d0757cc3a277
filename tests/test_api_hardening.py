"""Robot API hardening in-process: token expiry and rotation, the per-code guess budget,
per-address (IPv6 /64) back-off, the Host names the robot answers to, and no internal
paths in what the API tells a client.  (The same against the real daemon process over
HTTPS: tests/test_api_pairing.py.)"""

from __future__ import annotations

import asyncio
import socket

import pytest
import yaml

from brain.cli import main as cli_main
from brain.config import ApiConfig
from brain.daemon import Daemon
from brain.interface import CommandError
from edge_agent.api import auth as auth_mod
from edge_agent.api.auth import Pairing, PairingError, TokenStore, client_key, tokens_path
from edge_agent.api.hosts import HostCheck
from edge_agent.control_socket import handle_request
from tests.api_helpers import make_config, running_api, ws_protocols


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_token_ttl_expires_tokens_and_closes_their_streams(tmp_path):
    wall = Clock(1_800_000_000.0)

    async def body():
        async with running_api(tmp_path, wall=wall, **{"api.token_ttl_days": 1}) as api:
            tok = await api.token()
            c = api.client
            assert (await c.get("/api/v1/status", headers=api.bearer(tok))).status == 200
            ws = await c.ws_connect("/api/v1/teleop", protocols=ws_protocols(tok))
            await ws.receive_json(timeout=2)
            [rec] = api.auth.tokens.list()
            assert rec["expires"] is not None and rec["expired"] is False
            wall.t += 86_400 - 5
            assert (await c.get("/api/v1/status", headers=api.bearer(tok))).status == 200
            wall.t += 10  # a day and 5 s after pairing
            resp = await c.get("/api/v1/status", headers=api.bearer(tok))
            assert resp.status == 401
            closed = None
            for _ in range(50):
                msg = await ws.receive(timeout=2)
                if msg.type.name in ("CLOSE", "CLOSED", "CLOSING"):
                    closed = ws.close_code
                    break
            assert closed == 4401
            assert api.auth.tokens.list()[0]["expired"] is True

    asyncio.run(body())


def test_rotate_revokes_every_token_through_the_daemon_and_without_it(tmp_path, capsys):
    async def body():
        async with running_api(tmp_path) as api:
            toks = [await api.token(f"phone {i}") for i in range(2)]
            out = handle_request(
                api.daemon.brain, {"cmd": "tokens", "action": "rotate"}, api.config
            )
            assert out == {"ok": True, "result": {"revoked_all": 2}}
            for t in toks:
                resp = await api.client.get("/api/v1/status", headers=api.bearer(t))
                assert resp.status == 401
            assert api.auth.tokens.list() == []
            # Pairing again works at once.
            assert await api.token("phone again")

    asyncio.run(body())
    cfg = make_config(tmp_path / "offline")
    path = tmp_path / "robot.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    TokenStore(tokens_path(cfg)).issue("tablet")
    assert cli_main(["tokens", "rotate", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "revoked all 1 owner tokens" in out and "continuon pair" in out
    assert TokenStore(tokens_path(cfg)).list() == []
    bad = handle_request(Daemon(cfg, services=[]).brain, {"cmd": "tokens", "action": "x"}, cfg)
    assert not bad["ok"] and "rotate" in bad["error"]


def test_guessing_is_bounded_per_code_and_no_address_locks_out_another(monkeypatch):
    # The bound: all addresses together get at most CODE_GUESS_BUDGET guesses per code.
    assert auth_mod.CODE_GUESS_BUDGET / 10**auth_mod.CODE_DIGITS <= 1e-6
    clock = Clock()
    cfg = ApiConfig(pairing_rate_per_min=600)
    p = Pairing(cfg, clock)
    code = p.new_code()["code"]
    wrong = f"{(int(code.replace('-', '')) + 1) % 10**12:012d}"
    # 300 addresses each at their failure limit: none of it holds back a fresh address.
    for i in range(300):
        for _ in range(cfg.pairing_max_failures):
            with pytest.raises(PairingError) as err:
                p.redeem(wrong, f"10.0.{i // 250}.{i % 250}")
            assert err.value.status == 401
    p.redeem(code.replace("-", " "), "10.9.9.9")  # spaces or dashes or none: the same code

    # With a budget of 3 (patched to keep the test short), the 3rd wrong guess from
    # anywhere voids the code; it is void, not locked: a new code works at once.
    monkeypatch.setattr(auth_mod, "CODE_GUESS_BUDGET", 3)
    code = p.new_code()["code"]
    for ip in ("10.1.0.1", "10.1.0.2", "10.1.0.3"):
        with pytest.raises(PairingError) as err:
            p.redeem(wrong, ip)
        assert err.value.code == "invalid_code"
    with pytest.raises(PairingError) as err:  # the right code, but void now
        p.redeem(code, "10.1.0.4")
    assert err.value.status == 401 and "no pairing code is active" in str(err.value)
    p.redeem(p.new_code()["code"], "10.1.0.4")


def test_back_off_is_per_ipv4_address_and_per_ipv6_64_and_doubles():
    assert client_key("2001:db8::1") == client_key("2001:db8::ffff:1") == "2001:db8::/64"
    assert client_key("2001:db8:0:1::1") != client_key("2001:db8::1")
    assert client_key("::ffff:10.0.0.1") == "10.0.0.1"
    assert client_key("fe80::1%eth0") == "fe80::/64"
    clock = Clock()
    cfg = ApiConfig(pairing_rate_per_min=600, pairing_max_failures=3, pairing_lockout_s=60)
    p = Pairing(cfg, clock)
    p.new_code()
    waits = []
    for i in range(8):
        clock.t += (waits[-1] if waits else 0) + 0.01  # wait out the last back-off
        with pytest.raises(PairingError) as err:
            p.redeem("0000-0000-0000", f"2001:db8::{i + 1:x}")  # a new address each time
        assert err.value.status == 401
        waits.append(err.value.retry_after or 0)
    assert waits == [0, 0, 2, 4, 8, 16, 32, 60]  # doubling, capped at pairing_lockout_s
    with pytest.raises(PairingError) as err:
        p.redeem("0000-0000-0000", "2001:db8::99")
    assert err.value.status == 429 and err.value.retry_after > 59
    with pytest.raises(PairingError) as err:  # another /64 is not affected
        p.redeem("0000-0000-0000", "2001:db8:0:1::1")
    assert err.value.status == 401


def test_host_check_knows_the_robot_names_addresses_and_configured_hosts():
    clock = Clock()
    addrs = {"192.168.1.23", "fe80::1"}
    check = HostCheck("bot_1", ["Robot.Example.LAN"], addresses=lambda: set(addrs), clock=clock)
    short = socket.gethostname().split(".")[0]
    for ok in (
        f"{short}:8080",
        f"{short}.local",
        "continuon-bot-1.local:8080",
        "continuon-bot-1.local.",
        "192.168.1.23:8080",
        "[fe80::1]:8080",
        "[fe80:0::1]",
        "localhost:8080",
        "robot.example.lan",
    ):
        assert check.allowed(ok), ok
    for bad in (
        "evil.example",
        "evil.example:8080",
        "192.168.1.24",
        "localhost.evil.example",
        "continuon-bot-1.local.evil.example",
        "",
        None,
        "[fe80::1",
        "a:b:c",
        "127.0.0.1:http",
    ):
        assert not check.allowed(bad), bad
    addrs.add("10.0.0.7")  # DHCP gave the robot a new address
    clock.t += 2
    assert check.allowed("10.0.0.7:8080")


class LeakyBrain:
    """The real brain, whose mode change fails with a message naming a file on the robot."""

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def set_mode(self, *a, **k):
        raise CommandError("cannot load /var/lib/continuon/ota/slots/A/model.onnx: bad")


def test_errors_and_health_never_name_internal_paths(tmp_path):
    async def body():
        async with running_api(tmp_path, brain_wrapper=LeakyBrain) as api:
            tok = await api.token()
            resp = await api.client.post(
                "/api/v1/mode", json={"mode": "manual"}, headers=api.bearer(tok)
            )
            msg = (await resp.json())["error"]["message"]
            assert resp.status == 409 and "/var/lib" not in msg and "…/model.onnx" in msg
            health = await (await api.client.get("/api/v1/health")).json()
            assert str(tmp_path) not in str(health) and "path" not in health["checks"]["disk"]
            resp = await api.client.get("/api/v1/nothing-here")
            assert "/api/v1/nothing-here" in (await resp.json())["error"]["message"]

    asyncio.run(body())

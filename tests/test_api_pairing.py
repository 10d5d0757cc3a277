"""Pairing and transport against the real daemon process, served over HTTPS.

One `continuon run` subprocess (sim robot, INFO log captured) serves the module; its
certificate is made by `continuon tls init` and every client pins the fingerprint that
command printed.  Clients bind to different loopback addresses (127.0.0.1, 127.0.0.2) to
stand for different machines on the LAN.  Then: the owner pairs from one address while
another floods wrong codes; the flooder is backed off; forged Host/Origin headers are
refused on HTTP and WebSocket (DNS rebinding); codes never reach the log; a teleop
WebSocket flood is rate limited and closed while /health stays fast.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import yaml

from tests.daemon_helpers import sim_config

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
OWNER_IP = "127.0.0.2"
FLOODER_IP = "127.0.0.1"


@dataclass
class Robot:
    base: str
    port: int
    fingerprint: bytes
    config: Path
    log: Path
    env: dict[str, str]

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "brain.cli", *args, "--config", str(self.config)],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=30,
        )

    def new_code(self) -> str:
        out = self.cli("pair")
        assert out.returncode == 0, out.stderr
        return re.search(r"pairing code: (\d{4}-\d{4}-\d{4})", out.stdout).group(1)

    def session(self, local_ip: str, **kw) -> aiohttp.ClientSession:
        conn = aiohttp.TCPConnector(
            local_addr=(local_ip, 0), ssl=aiohttp.Fingerprint(self.fingerprint), force_close=False
        )
        return aiohttp.ClientSession(self.base, connector=conn, **kw)


@pytest.fixture(scope="module")
def robot() -> Iterator[Robot]:
    tmp = Path(tempfile.mkdtemp(prefix="cpair-"))  # short: the control socket path must fit
    raw = sim_config(
        tmp,
        **{
            "api.port": 0,
            "api.host": "127.0.0.1",
            "api.ws_max_msgs_per_s": 100.0,
            "logging.level": "INFO",
            "discovery.enabled": False,
        },
    )
    cfg_path = tmp / "robot.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    init = subprocess.run(
        [sys.executable, "-m", "brain.cli", "tls", "init", "--config", str(cfg_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert init.returncode == 0, init.stderr
    fp = re.search(r"SHA-256 fingerprint: ([0-9A-F:]{95})", init.stdout).group(1)
    tls_dir = tmp / "state" / "edge" / "tls"
    assert (tls_dir / "key.pem").stat().st_mode & 0o077 == 0
    raw["api"].update(tls_cert=str(tls_dir / "cert.pem"), tls_key=str(tls_dir / "key.pem"))
    cfg_path.write_text(yaml.safe_dump(raw))
    log = tmp / "daemon.log"
    with log.open("w") as log_f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "brain.cli", "run", "--config", str(cfg_path)],
            env=env,
            stdout=log_f,
            stderr=subprocess.STDOUT,
        )
    endpoint = tmp / "state" / "run" / "api.json"
    try:
        deadline = time.monotonic() + 60
        while not endpoint.exists() or not (tmp / "state" / "run" / "control.sock").exists():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the daemon did not start"
            time.sleep(0.1)
        info = json.loads(endpoint.read_text())
        assert info["scheme"] == "https"
        port = info["port"]
        yield Robot(
            f"https://127.0.0.1:{port}",
            port,
            bytes.fromhex(fp.replace(":", "")),
            cfg_path,
            log,
            env,
        )
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)


async def _pair(s: aiohttp.ClientSession, code: str) -> tuple[int, dict, dict]:
    async with s.post("/api/v1/pair", json={"code": code, "name": "phone"}) as r:
        return r.status, await r.json(), dict(r.headers)


def test_owner_pairs_from_another_address_while_one_floods_and_codes_stay_out_of_the_log(
    robot: Robot,
):
    async def body() -> None:
        code = robot.new_code()
        digits = code.replace("-", "")
        wrong = f"{(int(digits) + 7) % 10**12:012d}"
        flood_statuses: list[int] = []
        retry_after: list[int] = []
        started = asyncio.Event()

        async def flood() -> None:
            async with robot.session(FLOODER_IP) as s:
                t_end = time.monotonic() + 3.0
                for _ in range(400):  # bounded in count and time
                    if time.monotonic() > t_end:
                        break
                    status, _, headers = await _pair(s, wrong)
                    flood_statuses.append(status)
                    if status == 429:
                        retry_after.append(int(headers["Retry-After"]))
                    if len(flood_statuses) >= 20:
                        started.set()

        flooder = asyncio.create_task(flood())
        await asyncio.wait_for(started.wait(), 20)
        async with robot.session(OWNER_IP) as s:
            status, answer, _ = await _pair(s, code)
            assert status == 200, answer
            token = answer["token"]
            async with s.get("/api/v1/status", headers={"Authorization": f"Bearer {token}"}) as r:
                assert r.status == 200
        await flooder
        # The flooder: a handful of guesses, then only 429s with a Retry-After.
        guesses = flood_statuses.count(401)
        assert guesses == 5, flood_statuses[:12]
        assert flood_statuses.count(429) == len(flood_statuses) - 5
        assert retry_after and min(retry_after) >= 1
        # The code is single use, and the flooder's back-off still holds for the flooder.
        async with robot.session(FLOODER_IP) as s:
            assert (await _pair(s, code))[0] == 429
        # The log: that a code was issued, never the code itself.
        text = robot.log.read_text()
        assert "a pairing code was issued" in text
        assert digits not in text.replace("-", "") and code not in text
        assert "no device is paired yet" in text

    asyncio.run(body())


async def _token(robot: Robot) -> str:
    async with robot.session(OWNER_IP) as s:
        status, answer, _ = await _pair(s, robot.new_code())
        assert status == 200, answer
        return answer["token"]


def test_forged_host_with_matching_origin_is_refused_on_http_and_websocket(robot: Robot):
    async def body() -> None:
        token = await _token(robot)
        auth = {"Authorization": f"Bearer {token}"}
        evil = f"rebind.evil.example:{robot.port}"
        async with robot.session(OWNER_IP) as s:
            for host in (f"127.0.0.1:{robot.port}", f"localhost:{robot.port}", "127.0.0.1"):
                async with s.get("/api/v1/health", headers={"Host": host}) as r:
                    assert r.status == 200, host
            # A DNS-rebinding page: the browser sends its own name as Host and Origin.
            forged = {"Host": evil, "Origin": f"https://{evil}"}
            async with s.get("/api/v1/health", headers=forged) as r:
                assert r.status == 421 and (await r.json())["error"]["code"] == "bad_host"
            async with s.post("/api/v1/estop", json={}, headers={**auth, **forged}) as r:
                assert r.status == 421
            async with s.post("/api/v1/pair", json={"code": "1234-5678-9012"}, headers=forged) as r:
                assert r.status == 421
            async with s.get("/nope", headers=forged) as r:
                assert r.status == 421  # not even a 404 to learn from
            # The right Host with a foreign Origin: refused as before.
            async with s.post(
                "/api/v1/estop",
                json={},
                headers={**auth, "Origin": f"https://{evil}"},
            ) as r:
                assert r.status == 403
            protocols = ("continuon.v1", f"bearer.{token}")
            with pytest.raises(aiohttp.WSServerHandshakeError) as err:
                await s.ws_connect("/api/v1/teleop", protocols=protocols, headers=forged)
            assert err.value.status == 421
            with pytest.raises(aiohttp.WSServerHandshakeError) as err:
                await s.ws_connect(
                    "/api/v1/teleop", protocols=protocols, headers={"Origin": f"https://{evil}"}
                )
            assert err.value.status == 403
            ws = await s.ws_connect(
                "/api/v1/teleop",
                protocols=protocols,
                headers={"Origin": f"https://127.0.0.1:{robot.port}"},
            )
            await ws.close()

    asyncio.run(body())


def test_https_pins_the_fingerprint_of_tls_init(robot: Robot):
    async def body() -> None:
        wrong = aiohttp.TCPConnector(ssl=aiohttp.Fingerprint(bytes(32)))
        async with aiohttp.ClientSession(robot.base, connector=wrong) as s:
            with pytest.raises(aiohttp.ServerFingerprintMismatch):
                await s.get("/api/v1/health")
        # Without pinning, the self-signed certificate is (rightly) not trusted.
        async with aiohttp.ClientSession(robot.base) as s:
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await s.get("/api/v1/health")
        async with aiohttp.ClientSession(f"http://127.0.0.1:{robot.port}") as s:
            with pytest.raises(aiohttp.ClientError):
                await s.get("/api/v1/health")
        async with robot.session(OWNER_IP) as s, s.get("/api/v1/health") as r:
            health = await r.json()
            assert r.status == 200
            assert "path" not in health["checks"]["disk"]  # no internal paths
            assert "/" not in json.dumps(health["checks"])
        show = robot.cli("tls", "show")
        assert show.returncode == 0
        assert robot.fingerprint.hex(":").upper() in show.stdout
        again = robot.cli("tls", "init")
        assert again.returncode == 1 and "--force" in again.stderr

    asyncio.run(body())


def test_teleop_websocket_flood_is_rate_limited_and_health_stays_fast(robot: Robot):
    rate = 100  # api.ws_max_msgs_per_s of this daemon

    async def body() -> dict[str, float]:
        token = await _token(robot)
        protocols = ("continuon.v1", f"bearer.{token}")
        async with robot.session(OWNER_IP) as s:
            # A burst over the budget but under the flood line: the last message is not lost.
            ws = await s.ws_connect("/api/v1/teleop", protocols=protocols)
            ping = json.dumps({"type": "ping"})
            t0 = time.monotonic()
            for _ in range(2 * rate):
                await ws.send_str(ping)
            await ws.send_str(json.dumps({"type": "ping", "last": True}))
            # (an unknown field makes the last one an error reply: it must still arrive)
            pongs = errors = 0
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                msg = await ws.receive(timeout=5)
                data = json.loads(msg.data)
                pongs += data["type"] == "pong"
                if data["type"] == "error":
                    errors += 1
                    break
            elapsed = time.monotonic() - t0
            assert errors == 1, "the last message of a burst was dropped"
            assert pongs <= rate + rate * elapsed + 2, (pongs, elapsed)
            await ws.close()

            # A flood: closed with 1008 within about a second, and /health stays fast.
            latencies: list[float] = []
            sent_total = 0
            flood_t = 0.0

            async def health() -> None:
                while not done.is_set():
                    t = time.perf_counter()
                    async with s.get("/api/v1/health") as r:
                        assert r.status == 200
                    latencies.append(time.perf_counter() - t)
                    await asyncio.sleep(0.02)

            done = asyncio.Event()
            checker = asyncio.create_task(health())
            ws = await s.ws_connect("/api/v1/teleop", protocols=protocols)

            async def read_until_closed() -> None:
                async for _ in ws:  # telemetry; the close frame ends it
                    pass

            reader = asyncio.create_task(read_until_closed())
            teleop = json.dumps({"type": "teleop", "action": [0.0, 0.0]})
            t0 = time.monotonic()
            try:
                for _ in range(100_000):  # bounded in count and time
                    if ws.closed or reader.done() or time.monotonic() - t0 > 5:
                        break
                    await ws.send_str(teleop)
                    sent_total += 1
                    if sent_total % 100 == 0:
                        await asyncio.sleep(0)
            except (ConnectionError, aiohttp.ClientError):
                pass
            await asyncio.wait_for(reader, 6)
            flood_t = time.monotonic() - t0
            await asyncio.sleep(0.3)
            done.set()
            await checker
            assert ws.close_code == 1008, ws.close_code
            assert flood_t < 3.0
            # Reconnecting at once does not buy a fresh budget: this client waits.
            with pytest.raises(aiohttp.WSServerHandshakeError) as err:
                await s.ws_connect("/api/v1/teleop", protocols=protocols)
            assert err.value.status == 429 and int(err.value.headers["Retry-After"]) >= 1
            assert latencies and max(latencies) < 1.0, latencies
        return {
            "sent": sent_total,
            "flood_s": flood_t,
            "health_median_ms": 1000 * statistics.median(latencies),
            "health_max_ms": 1000 * max(latencies),
        }

    figures = asyncio.run(body())
    print("teleop flood:", figures)
    assert "disconnected" in robot.log.read_text()


def test_server_tls_context_needs_tls12_and_a_matching_key():
    from brain.config import ApiConfig
    from edge_agent.api.tls import make_self_signed, server_tls_context

    d = Path(tempfile.mkdtemp(prefix="ctls-"))
    try:
        cert, key = make_self_signed(["robot.local"], ["127.0.0.1"], days=1)
        (d / "c.pem").write_bytes(cert)
        (d / "k.pem").write_bytes(key)
        ctx = server_tls_context(ApiConfig(tls_cert=d / "c.pem", tls_key=d / "k.pem"))
        assert ctx is not None and ctx.minimum_version == ssl.TLSVersion.TLSv1_2
        assert server_tls_context(ApiConfig()) is None
        # A key that does not belong to the certificate: a clear error, never plain HTTP.
        _, other_key = make_self_signed(["robot.local"], [], days=1)
        (d / "k.pem").write_bytes(other_key)
        with pytest.raises(RuntimeError, match=r"api\.tls_cert"):
            server_tls_context(ApiConfig(tls_cert=d / "c.pem", tls_key=d / "k.pem"))
    finally:
        shutil.rmtree(d, ignore_errors=True)

"""Benchmark: a teleop WebSocket flood against the real daemon, and /health meanwhile.

The daemon runs on the simulated robot (``python -m brain.cli run``).  One client pairs,
sends pings at 600/s (over the 200/s budget, under the 800/s flood line) for
``--seconds``, then floods ``/api/v1/teleop`` with pings as fast as it can,
reconnecting whenever the robot closes the socket (a persistent attacker with a token).
Every message the robot handles is answered (``pong``), so pongs per second is what the
robot accepted.  Another client GETs ``/api/v1/health`` every 20 ms throughout; its
latency is reported idle and under the flood.

Then, without a network: how many pairing guesses one client address gets in its first
hour and per hour after that, replaying ``edge_agent.api.auth.Pairing`` on a simulated
clock with an attacker that retries the moment it is allowed.

    python bench/api_flood.py --json bench/results/api_flood.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
from harness import Daemon, sim_config


async def _health_loop(base: str, stop: asyncio.Event, out: list[float]) -> None:
    async with aiohttp.ClientSession(base) as s:
        while not stop.is_set():
            t = time.perf_counter()
            async with s.get("/api/v1/health") as r:
                await r.read()
            out.append((time.perf_counter() - t) * 1000)
            await asyncio.sleep(0.02)


def _stats(ms: list[float]) -> dict[str, float]:
    arr = sorted(ms)
    return {
        "n": len(arr),
        "p50_ms": round(statistics.median(arr), 2),
        "p99_ms": round(arr[min(len(arr) - 1, int(len(arr) * 0.99))], 2),
        "max_ms": round(arr[-1], 2),
    }


async def _flood(base: str, token: str, seconds: float) -> dict[str, float]:
    protocols = ("continuon.v1", f"bearer.{token}")
    sent = pongs = reconnects = refused = 0
    ping = json.dumps({"type": "ping"})
    t_end = time.monotonic() + seconds
    async with aiohttp.ClientSession(base) as s:
        while time.monotonic() < t_end:
            try:
                ws = await s.ws_connect("/api/v1/teleop", protocols=protocols)
            except aiohttp.WSServerHandshakeError as exc:
                assert exc.status == 429, exc
                refused += 1
                await asyncio.sleep(0.01)  # an attacker retrying (almost) at once
                continue
            reconnects += 1

            async def read(ws: aiohttp.ClientWebSocketResponse = ws) -> None:
                nonlocal pongs
                async for msg in ws:
                    if msg.type == aiohttp.WSMsgType.TEXT and '"pong"' in msg.data:
                        pongs += 1

            reader = asyncio.create_task(read())
            try:
                while time.monotonic() < t_end and not reader.done() and not ws.closed:
                    await ws.send_str(ping)
                    sent += 1
                    if sent % 100 == 0:
                        await asyncio.sleep(0)
            except (ConnectionError, aiohttp.ClientError):
                pass
            await ws.close()
            await asyncio.wait_for(reader, 15)
    return {
        "sent_per_s": round(sent / seconds),
        "handled_per_s": round(pongs / seconds),
        "connections": reconnects,
        "connections_refused_429": refused,
    }


async def _paced(base: str, token: str, seconds: float, rate: float) -> dict[str, float]:
    """A sender that stays under the flood line (4x the budget): what it gets handled."""
    protocols = ("continuon.v1", f"bearer.{token}")
    ping = json.dumps({"type": "ping"})
    sent = pongs = 0
    async with aiohttp.ClientSession(base) as s:
        ws = await s.ws_connect("/api/v1/teleop", protocols=protocols)

        async def read() -> None:
            nonlocal pongs
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT and '"pong"' in msg.data:
                    pongs += 1

        reader = asyncio.create_task(read())
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds and not ws.closed:
            target = int((time.monotonic() - t0) * rate)
            while sent < target:
                await ws.send_str(ping)
                sent += 1
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.5)
        closed_by_robot = ws.close_code
        await ws.close()
        await asyncio.wait_for(reader, 15)
    return {
        "sent_per_s": round(sent / seconds),
        "handled_per_s": round(pongs / seconds),
        "closed_by_robot": closed_by_robot,
    }


async def _run(base: str, token: str, seconds: float) -> dict[str, object]:
    idle: list[float] = []
    stop = asyncio.Event()
    checker = asyncio.create_task(_health_loop(base, stop, idle))
    await asyncio.sleep(2.0)
    stop.set()
    await checker
    paced_lat: list[float] = []
    stop = asyncio.Event()
    checker = asyncio.create_task(_health_loop(base, stop, paced_lat))
    paced = await _paced(base, token, seconds, 600.0)
    stop.set()
    await checker
    busy: list[float] = []
    stop = asyncio.Event()
    checker = asyncio.create_task(_health_loop(base, stop, busy))
    flood = await _flood(base, token, seconds)
    stop.set()
    await checker
    return {
        "paced_600_per_s": paced,
        "health_under_paced": _stats(paced_lat),
        "flood": flood,
        "health_idle": _stats(idle),
        "health_under_flood": _stats(busy),
    }


def pairing_guesses_per_hour() -> dict[str, int]:
    try:
        from brain.config import ApiConfig
        from edge_agent.api.auth import Pairing, PairingError
    except ImportError:
        return {}
    logging.getLogger("continuon.api.auth").setLevel(logging.ERROR)
    t = [0.0]
    p = Pairing(ApiConfig(), clock=lambda: t[0])
    p.new_code()
    guesses: list[float] = []
    while t[0] < 3 * 3600:
        if t[0] % 240 < 1e-9:
            p.new_code()  # the owner keeps a code live (they expire after 300 s)
        try:
            p.redeem("0000-0000-0000", "192.0.2.7")
        except PairingError as exc:
            if exc.status == 401:
                guesses.append(t[0])
        t[0] += 1.0
    first = sum(1 for g in guesses if g < 3600)
    third = sum(1 for g in guesses if 2 * 3600 <= g < 3 * 3600)
    return {"first_hour": first, "per_hour_after": third}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bflood-"))
    cfg = sim_config(tmp, "flood", api={"port": 0, "host": "127.0.0.1"})
    d = Daemon(cfg, tmp, "flood")
    try:
        d.wait_ready()
        endpoint = Path(d.state) / "run" / "api.json"
        for _ in range(200):
            if endpoint.exists():
                break
            time.sleep(0.05)
        base = f"http://127.0.0.1:{json.loads(endpoint.read_text())['port']}"
        code = d.cmd("pair")["code"]

        async def pair() -> str:
            async with aiohttp.ClientSession(base) as s:
                r = await s.post("/api/v1/pair", json={"code": code, "name": "bench"})
                return (await r.json())["token"]

        token = asyncio.run(pair())
        result = asyncio.run(_run(base, token, args.seconds))
    finally:
        d.stop()
    result["pairing_guesses_per_address"] = pairing_guesses_per_hour()
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

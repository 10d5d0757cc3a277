"""Benchmark: teleop over the Robot API's WebSocket, command to actuator write, on loopback.

The daemon runs on the simulated robot in a child process (this file with
``--child``), set up exactly as ``continuon run`` does, except that its
actuators are wrapped at the driver boundary to timestamp every write and its
teleop latch is wrapped to timestamp arrival.  Both processes read
CLOCK_MONOTONIC, so times compare directly.

Every command carries a unique steering value; its latency is the time from
``ws.send`` to the first actuator write carrying that value.  Commands are
spaced 1.2-2.2 control periods apart at random phase, so each one reaches the
actuators (none is overwritten by the next) and the wait for the next control
tick is sampled fairly.  That wait is inherent in a fixed-rate loop (up to one
period: 50 ms at 20 Hz, 20 ms at 50 Hz), so the run is repeated at several
control rates, and the API's own part (send -> brain.teleop latch) is
reported separately.

The second part measures the daemon's CPU with nothing connected and then
with one client streaming the MJPEG camera, each for ``--cpu-seconds``.

    python bench/teleop.py --json bench/results/teleop.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from harness import ROOT, print_table, sim_config

from edge_agent.control_socket import request

TARGET_P99_MS = 20.0


# ----------------------------------------------------------------------------- child


def child(config_path: Path, trace_path: Path) -> None:
    """The daemon, as `continuon run` starts it, with timestamping at the driver boundary."""
    import numpy as np

    from brain.config import load_config
    from brain.daemon import Daemon, tune_process
    from brain.hardware.devices import open_devices
    from brain.logs import setup_logging
    from edge_agent.api.service import make_service as api_service
    from edge_agent.control_socket import make_service as socket_service

    cfg = load_config(config_path)
    setup_logging(cfg.logging.level, cfg.logging.format)
    tune_process()
    devices = open_devices(cfg)
    writes: list[tuple[float, float, float]] = []
    latches: list[tuple[float, float]] = []
    inner = devices.actuators

    class Stamped:
        action_spec = inner.action_spec

        def start(self) -> None:
            inner.start()

        def write(self, action) -> None:
            inner.write(action)
            a = np.asarray(action, dtype=float)
            writes.append((time.monotonic(), float(a[0]), float(a[1])))

        def neutral(self) -> None:
            inner.neutral()

        def close(self) -> None:
            inner.close()

    devices.actuators = Stamped()
    daemon = Daemon(cfg, devices=devices, services=[socket_service, api_service])
    latch = daemon.control.teleop
    original_set = latch.set

    def stamped_set(action) -> None:
        original_set(action)
        latches.append((time.monotonic(), float(action[0])))

    latch.set = stamped_set  # type: ignore[method-assign]
    asyncio.run(daemon.run())
    trace_path.write_text(json.dumps({"writes": writes, "latches": latches}))


# ----------------------------------------------------------------------------- parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Child:
    def __init__(self, tmp: Path, name: str, rate_hz: float) -> None:
        self.config = sim_config(
            tmp,
            name,
            api={"host": "127.0.0.1", "port": _free_port()},
            control={"rate_hz": rate_hz},
            safety={"slew_per_s": {}, "limits": {}},
        )
        self.state = Path(json.loads(json.dumps(_yaml(self.config)))["paths"]["state_dir"])
        self.trace = tmp / f"{name}.trace.json"
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--child", str(self.config), str(self.trace)],
            cwd=ROOT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
            stderr=subprocess.PIPE,
            text=True,
        )
        self.ps = psutil.Process(self.proc.pid)
        endpoint = self.state / "run" / "api.json"
        t0 = time.monotonic()
        while not endpoint.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"the daemon exited: {self.proc.stderr.read()}")
            if time.monotonic() - t0 > 60:
                raise TimeoutError("the daemon did not start its Robot API")
            time.sleep(0.05)
        self.port = json.loads(endpoint.read_text())["port"]
        self.base = f"http://127.0.0.1:{self.port}"

    def ctl(self, cmd: str, **kw):
        resp = request(self.state / "run" / "control.sock", {"cmd": cmd, **kw})
        if not resp.get("ok"):
            raise RuntimeError(resp.get("error"))
        return resp["result"]

    def stop(self) -> dict:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=20)
        return json.loads(self.trace.read_text())


def _yaml(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


async def _pair(http, c: Child) -> dict[str, str]:
    code = c.ctl("pair")["code"]  # as `continuon pair` does
    async with http.post(f"{c.base}/api/v1/pair", json={"code": code, "name": "bench"}) as r:
        token = (await r.json())["token"]
    return {"Authorization": f"Bearer {token}"}, token


async def _latency_run(c: Child, rate_hz: float, n: int) -> list[tuple[float, float]]:
    import aiohttp

    sends: list[tuple[float, float]] = []
    period = 1.0 / rate_hz
    async with aiohttp.ClientSession() as http:
        h, token = await _pair(http, c)
        async with http.post(f"{c.base}/api/v1/mode", json={"mode": "manual"}, headers=h) as r:
            assert r.status == 200, await r.text()
        ws = await http.ws_connect(
            f"{c.base}/api/v1/teleop", protocols=("continuon.v1", f"bearer.{token}")
        )
        rng = random.Random(0)
        warm_end = time.monotonic() + 1.0  # first commands after entering MANUAL: not timed
        while time.monotonic() < warm_end:
            await ws.send_str(json.dumps({"type": "teleop", "action": [0.95, 0.0]}))
            await asyncio.sleep(period)
        c.ctl("reset_stats")
        stale0 = c.ctl("stats")["control"]["faults"]["stale_frame"]
        for i in range(n):
            steer = round(-0.9 + (i % 1800) * 0.001, 6)
            t = time.monotonic()
            await ws.send_str(json.dumps({"type": "teleop", "action": [steer, 0.0]}))
            sends.append((t, steer))
            await asyncio.sleep(period * rng.uniform(1.2, 2.2))
        await ws.close()
        async with http.post(f"{c.base}/api/v1/mode", json={"mode": "idle"}, headers=h) as r:
            pass
        c.loop_stats = c.ctl("stats")["control"]
        c.loop_stats["stale_during_run"] = c.loop_stats["faults"]["stale_frame"] - stale0
    return sends


def _match(sends, events, key=1) -> list[float]:
    """ms from each send to the first later event carrying its steering value."""
    out = []
    j = 0
    for t_send, steer in sends:
        while j < len(events) and events[j][0] < t_send:
            j += 1
        for k in range(j, min(j + 200, len(events))):
            if abs(events[k][key] - steer) < 1e-9:
                out.append((events[k][0] - t_send) * 1000)
                break
    return out


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return round(s[min(len(s) - 1, int(len(s) * q))], 3) if s else float("nan")


def latency(tmp: Path, rate_hz: float, n: int) -> dict:
    c = Child(tmp, f"teleop-{rate_hz:g}", rate_hz)
    try:
        sends = asyncio.run(_latency_run(c, rate_hz, n))
    finally:
        trace = c.stop()
    e2e = _match(sends, trace["writes"])
    api = _match(sends, trace["latches"])
    st = c.loop_stats
    return {
        "rate_hz": rate_hz,
        "commands": len(sends),
        "matched": len(e2e),
        "p50_ms": _pct(e2e, 0.5),
        "p99_ms": _pct(e2e, 0.99),
        "max_ms": _pct(e2e, 1.0),
        "api_p50_ms": _pct(api, 0.5),
        "api_p99_ms": _pct(api, 0.99),
        "api_max_ms": _pct(api, 1.0),
        # commands never written: the loop drove neutral instead (e.g. a stale camera frame)
        "stale_frame_ticks": st["stale_during_run"],
        "loop_jitter_p99_ms": st["jitter_ms"]["p99"],
        "loop_overruns": st["overruns"],
    }


async def _stream(c: Child, seconds: float) -> dict:
    import aiohttp

    async with aiohttp.ClientSession() as http:
        h, _ = await _pair(http, c)
        async with http.post(f"{c.base}/api/v1/stream-ticket", headers=h) as r:
            ticket = (await r.json())["ticket"]
        frames = 0
        nbytes = 0
        c.ps.cpu_percent(None)
        end = time.monotonic() + seconds
        async with http.get(f"{c.base}/api/v1/camera.mjpg?ticket={ticket}") as r:
            assert r.status == 200
            while time.monotonic() < end:
                chunk = await r.content.read(65536)
                nbytes += len(chunk)
                frames += chunk.count(b"\xff\xd8\xff")
        cpu = c.ps.cpu_percent(None)
    return {
        "cpu_percent": round(cpu, 1),
        "fps": round(frames / seconds, 1),
        "mbit_s": round(nbytes * 8 / seconds / 1e6, 2),
    }


def cpu(tmp: Path, seconds: float) -> dict:
    """Default config (20 Hz, 640x480 camera at 30 fps, stream capped at 15 fps), mode idle."""
    c = Child(tmp, "cpu", 20.0)
    try:
        time.sleep(2.0)  # let the sim finish building its textures
        c.ps.cpu_percent(None)
        time.sleep(seconds)
        idle = round(c.ps.cpu_percent(None), 1)
        streaming = asyncio.run(_stream(c, seconds))
    finally:
        c.stop()
    return {"idle_no_client_cpu_percent": idle, **streaming}


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(Path(sys.argv[2]), Path(sys.argv[3]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rates", type=float, nargs="+", default=[20.0, 50.0, 100.0])
    ap.add_argument("--headline-rate", type=float, default=50.0)
    ap.add_argument("--commands", type=int, default=300)
    ap.add_argument("--cpu-seconds", type=float, default=10.0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rates = sorted(set(args.rates) | {args.headline_rate})
    with tempfile.TemporaryDirectory(prefix="bench-teleop-") as d:
        tmp = Path(d)
        rows = [latency(tmp, hz, args.commands) for hz in rates]
        video = cpu(tmp, args.cpu_seconds)
    print_table(
        "teleop: WebSocket send -> actuator write (e2e) and -> brain latch (api), ms",
        rows,
        [
            ("rate_hz", "loop Hz"),
            ("matched", "cmds"),
            ("p50_ms", "e2e p50"),
            ("p99_ms", "e2e p99"),
            ("max_ms", "e2e max"),
            ("api_p50_ms", "api p50"),
            ("api_p99_ms", "api p99"),
            ("api_max_ms", "api max"),
            ("loop_jitter_p99_ms", "jitter p99"),
            ("stale_frame_ticks", "stale"),
        ],
    )
    print(
        f"daemon CPU (% of one core): idle {video['idle_no_client_cpu_percent']}, "
        f"one MJPEG client {video['cpu_percent']} at {video['fps']} fps, {video['mbit_s']} Mbit/s"
    )
    head = next(r for r in rows if r["rate_hz"] == args.headline_rate)
    result = {
        "teleop_p50_ms": head["p50_ms"],
        "teleop_p99_ms": head["p99_ms"],
        "teleop_rate_hz": args.headline_rate,
        "teleop_api_p50_ms": head["api_p50_ms"],
        "teleop_api_p99_ms": head["api_p99_ms"],
        "target_p99_ms": TARGET_P99_MS,
        "meets_target": head["p99_ms"] <= TARGET_P99_MS,
        "idle_cpu_percent_streaming": video["cpu_percent"],
        "idle_cpu_percent_no_client": video["idle_no_client_cpu_percent"],
        "stream_fps": video["fps"],
        "stream_mbit_s": video["mbit_s"],
        "by_rate": rows,
        "machine": {
            "cpus": os.cpu_count(),
            "load_avg": [round(x, 2) for x in os.getloadavg()],
            "note": "shared, noisy dev machine (other jobs running); loopback; sim robot",
        },
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: upload throughput (HTTP to `cloud_jobs ingest`, and to a directory) and
cloud-link event latency (event raised -> received by a subscriber through a real mosquitto).

Everything on loopback on this machine, which is shared and noisy: figures are indicative.

    python bench/network.py --mb 64 --events 200 --json bench/results/network.json
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from harness import ROOT, print_table

sys.path.insert(0, str(ROOT / "tests"))

from aiohttp import web

from brain.config import UploaderConfig, parse_config
from cloud_jobs.ingest import make_app
from edge_agent.uploader import upload_directory


def make_export(d: Path, mb: int, files: int = 8) -> int:
    d.mkdir(parents=True)
    table = {}
    size = mb * (1 << 20) // files
    for i in range(files):
        data = os.urandom(size)
        (d / f"part-{i:02d}.bin").write_bytes(data)
        table[f"part-{i:02d}.bin"] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": size}
    (d / "manifest.json").write_text(json.dumps({"dataset_id": "bench", "files": table}))
    return size * files


async def upload_http(src: Path, root: Path, chunk: int) -> float:
    runner = web.AppRunner(make_app(root))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        t0 = time.perf_counter()
        rep = await upload_directory(
            UploaderConfig(destination=f"http://127.0.0.1:{port}", chunk_bytes=chunk),
            src,
            robot_id="bench",
        )
        dt = time.perf_counter() - t0
        assert rep.ok, rep
        return dt
    finally:
        await runner.cleanup()


def upload_rows(mb: int) -> list[dict]:
    tmp = Path(tempfile.mkdtemp(prefix="cb-bench-net-"))
    try:
        total = make_export(tmp / "export", mb)
        rows = []
        for chunk in (1 << 20, 4 << 20):
            dt = asyncio.run(upload_http(tmp / "export", tmp / f"http-{chunk}", chunk))
            rows.append(
                {
                    "what": f"http chunk {chunk >> 20}MiB",
                    "mb": mb,
                    "seconds": round(dt, 2),
                    "mb_per_s": round(total / dt / 1e6, 1),
                }
            )
        t0 = time.perf_counter()
        rep = asyncio.run(
            upload_directory(
                UploaderConfig(destination=str(tmp / "dir")), tmp / "export", robot_id="bench"
            )
        )
        dt = time.perf_counter() - t0
        assert rep.ok
        rows.append(
            {
                "what": "directory",
                "mb": mb,
                "seconds": round(dt, 2),
                "mb_per_s": round(total / dt / 1e6, 1),
            }
        )
        return rows
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


async def event_latency(n: int) -> dict:
    import aiomqtt
    from mosquitto_helpers import Broker
    from network_helpers import FakeBrain

    from edge_agent.cloud.link import CloudLink

    tmp = Path(tempfile.mkdtemp(prefix="cb-bench-mqtt-"))
    broker = Broker(tmp / "broker")
    broker.start()
    try:
        cfg = parse_config(
            {
                "robot": {"id": "bench"},
                "paths": {"state_dir": str(tmp / "state")},
                "cloud": {
                    "enabled": True,
                    "host": "127.0.0.1",
                    "port": broker.port,
                    "tls": False,
                    "telemetry_period_s": 60,
                },
            }
        )
        link = CloudLink(FakeBrain(robot_id="bench"), cfg)
        task = asyncio.create_task(link.run())
        await asyncio.wait_for(link.connected.wait(), 10)
        lat: list[float] = []
        async with aiomqtt.Client("127.0.0.1", broker.port) as sub:
            await sub.subscribe("continuon/bench/events", qos=1)
            for i in range(n):
                t0 = time.perf_counter()
                link.emit({"type": "bench", "i": i})
                async for m in sub.messages:
                    if json.loads(m.payload).get("i") == i:
                        lat.append((time.perf_counter() - t0) * 1000)
                        break
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        lat.sort()
        return {
            "what": "event emit->subscriber (fsync + QoS1)",
            "n": n,
            "p50_ms": round(statistics.median(lat), 2),
            "p99_ms": round(lat[min(len(lat) - 1, int(0.99 * len(lat)))], 2),
        }
    finally:
        broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=64)
    ap.add_argument("--events", type=int, default=200)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    ups = upload_rows(args.mb)
    print_table(
        "uploads on loopback (noisy shared machine)",
        ups,
        [(k, k) for k in ("what", "mb", "seconds", "mb_per_s")],
    )
    ev = asyncio.run(event_latency(args.events))
    print_table(
        "cloud link events (real mosquitto, loopback)",
        [ev],
        [(k, k) for k in ("n", "p50_ms", "p99_ms")],
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"uploads": ups, "events": ev}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Robot API routes against the real daemon on the sim robot: REST, errors, streams, uploads."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import aiohttp
import cv2
import numpy as np
import pytest

from edge_agent.api.routes import PUBLIC, ROUTES, WEBAPP_DIR
from tests.api_helpers import running_api, ws_protocols


def test_openapi_matches_the_router(tmp_path):
    async def body():
        async with running_api(tmp_path) as api:
            resp = await api.client.get("/openapi.json")
            assert resp.status == 200
            doc = await resp.json()
            served = {
                (r.method, r.resource.canonical) for r in api.client.server.app.router.routes()
            }
            return doc, served

    doc, served = asyncio.run(body())
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert documented == served
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            public = (method.upper(), path) in PUBLIC
            assert (op["security"] == []) == public, (method, path)
            for name in (p["name"] for p in op.get("parameters", [])):
                assert "{" + name + "}" in path
            ref = op.get("requestBody", {}).get("content", {}).get("application/json")
            if ref:
                name = ref["schema"]["$ref"].rsplit("/", 1)[1]
                assert name in doc["components"]["schemas"]
    assert doc["paths"]["/api/v1/mode"]["post"]["requestBody"]
    assert len(ROUTES) == len(served)


def test_health_status_modes_estop_and_errors(tmp_path):
    async def body():
        async with running_api(tmp_path) as api:
            c = api.client
            resp = await c.get("/api/v1/health")
            health = await resp.json()
            assert resp.status == 200 and health["ok"] is True
            assert health["api_version"] == "1" and health["robot_id"] == api.config.robot.id
            assert health["mode"] == "idle"
            assert {"cpu_temp", "disk", "memory", "control_loop"} <= set(health["checks"])
            h = api.bearer(await api.token())
            assert (await (await c.get("/api/v1/status", headers=h)).json())["mode"] == "idle"
            stats = await (await c.get("/api/v1/stats", headers=h)).json()
            assert "control" in stats

            resp = await c.post("/api/v1/mode", json={"mode": "manual"}, headers=h)
            assert await resp.json() == {"from": "idle", "to": "manual"}
            resp = await c.post("/api/v1/estop", json={"reason": "test"}, headers=h)
            assert resp.status == 200 and api.daemon.modes.mode.value == "estop"
            assert api.daemon.modes.estop_reason == "test"
            # refused by the brain: 409 with its reason
            resp = await c.post("/api/v1/mode", json={"mode": "manual"}, headers=h)
            err = await resp.json()
            assert resp.status == 409 and "latched" in err["error"]["message"]
            resp = await c.post("/api/v1/reset", headers=h)
            assert resp.status == 200 and api.daemon.modes.mode.value == "idle"

            cases = [
                ({"mode": "warp"}, None, 422, "mode"),
                ({"mode": "manual", "extra": 1}, None, 422, "extra"),
                ({"mode": 3}, None, 422, "mode"),
                ([1, 2], None, 422, "body"),
                (b"{", "application/json", 400, "JSON"),
                (b'{"mode": NaN}', "application/json", 400, "NaN"),
                (b"mode=manual", "application/x-www-form-urlencoded", 415, "application/json"),
            ]
            for data, ctype, status, word in cases:
                kw = {"json": data} if ctype is None else {"data": data}
                headers = dict(h, **({"Content-Type": ctype} if ctype else {}))
                resp = await c.post("/api/v1/mode", headers=headers, **kw)
                err = (await resp.json())["error"]
                assert resp.status == status, (data, resp.status, err)
                assert word in err["message"], (word, err)
            big = {"reason": "x" * (api.config.api.max_body_bytes + 10)}
            resp = await c.post("/api/v1/estop", json=big, headers=h)
            assert resp.status == 413 and (await resp.json())["error"]["code"] == "too_large"
            assert api.daemon.modes.mode.value == "idle", "the oversized e-stop was not parsed"
            resp = await c.get("/api/v1/nothing", headers=h)
            assert resp.status == 404 and (await resp.json())["error"]["code"] == "not_found"
            resp = await c.put("/api/v1/status", headers=h)
            assert resp.status == 405 and "PUT" in (await resp.json())["error"]["message"]
            resp = await c.get("/api/v1/status", headers=h)
            assert resp.headers["X-Frame-Options"] == "DENY"
            assert resp.headers["Cache-Control"] == "no-store"

    asyncio.run(body())


def test_static_files_and_traversal(tmp_path):
    async def body():
        async with running_api(tmp_path) as api:
            c = api.client
            resp = await c.get("/")
            assert resp.status == (200 if (WEBAPP_DIR / "index.html").is_file() else 404)
            for bad in (
                "/static/../api/auth.py",
                "/static/%2e%2e/api/auth.py",
                "/static/nope.js",
                "/static/" + "a" * 5000,
                "/static/a%00b",
                "/static//etc/passwd",
            ):
                resp = await c.get(bad)
                assert resp.status == 404, bad
            files = [p for p in WEBAPP_DIR.rglob("*") if p.is_file()] if WEBAPP_DIR.exists() else []
            for f in files[:3]:
                rel = f.relative_to(WEBAPP_DIR).as_posix()
                resp = await c.get(f"/static/{rel}")
                assert resp.status == 200 and await resp.read() == f.read_bytes()

    asyncio.run(body())


def test_recording_episodes_export_training_updates(tmp_path):
    async def body():
        async with running_api(tmp_path, **{"recording.min_steps": 1}) as api:
            c = api.client
            h = api.bearer(await api.token())
            assert (await (await c.get("/api/v1/episodes", headers=h)).json()) == {"episodes": []}
            resp = await c.post("/api/v1/recording/start", json={"tags": ["api-test"]}, headers=h)
            assert resp.status == 200, await resp.text()
            resp = await c.post("/api/v1/recording/start", json={"tags": ["bad tag!"]}, headers=h)
            assert resp.status == 422
            await c.post("/api/v1/mode", json={"mode": "manual"}, headers=h)
            for _ in range(20):
                api.daemon.brain.teleop([0.0, 0.2])
                await asyncio.sleep(0.05)
            await c.post("/api/v1/mode", json={"mode": "idle"}, headers=h)
            resp = await c.post("/api/v1/recording/stop", headers=h)
            assert resp.status == 200
            for _ in range(300):  # the commit is the writer process's: slow on a loaded machine
                eps = (await (await c.get("/api/v1/episodes", headers=h)).json())["episodes"]
                if eps and "tags" in eps[0]:  # committed (in-progress ones have no metadata)
                    break
                await asyncio.sleep(0.1)
            assert eps and eps[0]["tags"][-1] == "api-test", eps
            resp = await c.post("/api/v1/episodes/export", json={"format": "parquet"}, headers=h)
            assert resp.status == 422
            resp = await c.post("/api/v1/episodes/export", json={"format": "rlds"}, headers=h)
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["format"] == "rlds"
            resp = await c.delete("/api/v1/episodes/no-such-episode", headers=h)
            assert resp.status == 404
            resp = await c.delete("/api/v1/episodes/..%2F..%2Fetc", headers=h)
            assert resp.status == 404
            resp = await c.delete(f"/api/v1/episodes/{eps[0]['episode_id']}", headers=h)
            assert resp.status == 200, await resp.text()
            assert (await (await c.get("/api/v1/episodes", headers=h)).json())["episodes"] == []
            # training and updates answer whether or not their components are installed
            resp = await c.get("/api/v1/training", headers=h)
            assert resp.status == 200 and isinstance(await resp.json(), dict)
            resp = await c.post("/api/v1/training/start", json=[1], headers=h)
            assert resp.status == 422
            resp = await c.get("/api/v1/updates", headers=h)
            assert resp.status == 200 and isinstance(await resp.json(), dict)

    asyncio.run(body())


class RecordingUpdater:
    """An UpdaterInterface that keeps what it was asked to install (the OTA checks are theirs)."""

    def __init__(self):
        self.installed: list[tuple[Path, bytes]] = []

    def status(self):
        return {"available": True, "phase": "idle"}

    async def check(self):
        return {"result": "up to date", **self.status()}

    async def install(self, archive):
        self.installed.append((archive, archive.read_bytes()))
        return {"result": f"installed {archive.name}", **self.status()}

    async def rollback(self):
        return {"result": "rolled back to v1", **self.status()}


@pytest.mark.slow
def test_a_stalled_upload_gives_the_upload_slot_back(tmp_path):
    """An owner who opens an upload and stops sending (or trickles) is dropped with 408; the
    other uploads get 409 only meanwhile, never indefinitely."""

    async def raw_upload(api, token, declared, first, *, trickle_s=None):
        host, port = api.client.server.host, api.client.server.port
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(
            (
                f"POST /api/v1/updates/upload HTTP/1.1\r\nHost: {host}:{port}\r\n"
                f"Authorization: Bearer {token}\r\nContent-Type: application/octet-stream\r\n"
                f"Content-Length: {declared}\r\n\r\n"
            ).encode()
            + first
        )
        await writer.drain()

        async def trickle():
            while trickle_s is not None:
                await asyncio.sleep(trickle_s)
                writer.write(b"z")
                await writer.drain()

        t = asyncio.ensure_future(trickle())
        try:
            status_line = await asyncio.wait_for(reader.readline(), 15)
            rest = await asyncio.wait_for(reader.read(4096), 5)
        finally:
            t.cancel()
            writer.close()
        return status_line.decode(), rest.decode(errors="replace")

    async def body():
        over = {"api.upload_idle_timeout_s": 1.0, "api.upload_timeout_s": 5.0}
        async with running_api(tmp_path, **over) as api:
            token = await api.token()
            oct_h = dict(api.bearer(token), **{"Content-Type": "application/octet-stream"})
            updater = RecordingUpdater()
            api.daemon.brain.updater = updater
            uploads = api.config.state_dir() / "edge" / "uploads"
            t0 = time.monotonic()
            stalled = asyncio.ensure_future(raw_upload(api, token, 1_000_000, b"x" * 1000))
            await asyncio.sleep(0.3)
            resp = await api.client.post("/api/v1/updates/upload", data=b"a" * 100, headers=oct_h)
            assert resp.status == 409  # while the stalled one holds the slot
            line, rest = await stalled
            idle_took = time.monotonic() - t0
            assert " 408 " in line and "upload_idle_timeout_s" in rest, (line, rest)
            resp = await api.client.post("/api/v1/updates/upload", data=b"b" * 100, headers=oct_h)
            assert resp.status == 200, await resp.text()  # the slot is free again
            assert [got for _, got in updater.installed] == [b"b" * 100]
            # a trickle (one byte every 0.3 s) never idles out, but the total limit ends it
            t0 = time.monotonic()
            line, rest = await raw_upload(api, token, 1_000_000, b"y", trickle_s=0.3)
            total_took = time.monotonic() - t0
            assert " 408 " in line and "upload_timeout_s" in rest, (line, rest)
            resp = await api.client.post("/api/v1/updates/upload", data=b"c" * 100, headers=oct_h)
            assert resp.status == 200
            assert list(uploads.iterdir()) == []  # abandoned bodies are not kept
            return idle_took, total_took

    idle_took, total_took = asyncio.run(body())
    assert 0.9 < idle_took < 4.0, idle_took
    assert 4.9 < total_took < 9.0, total_took


def test_update_upload_streams_to_disk_with_a_limit(tmp_path):
    async def body():
        limit = 2 * 1024 * 1024
        async with running_api(tmp_path, **{"api.max_upload_bytes": limit}) as api:
            c = api.client
            h = api.bearer(await api.token())
            uploads = api.config.state_dir() / "edge" / "uploads"
            # without an updater: refused, and nothing left behind
            api.daemon.brain.updater = None
            oct_h = dict(h, **{"Content-Type": "application/octet-stream"})
            resp = await c.post("/api/v1/updates/upload", data=b"x" * 1000, headers=oct_h)
            assert resp.status == 409 and "not available" in (await resp.json())["error"]["message"]
            assert list(uploads.iterdir()) == []
            updater = RecordingUpdater()
            api.daemon.brain.updater = updater
            payload = np.random.default_rng(0).integers(0, 256, 1_500_000, np.uint8).tobytes()

            async def chunks():  # chunked transfer: no Content-Length to trust
                for i in range(0, len(payload), 100_000):
                    yield payload[i : i + 100_000]

            resp = await c.post("/api/v1/updates/upload", data=chunks(), headers=oct_h)
            assert resp.status == 200, await resp.text()
            [(path, got)] = updater.installed
            assert got == payload and path.parent == uploads
            assert list(uploads.iterdir()) == [], "the temp file must be removed"
            too_big = b"y" * (limit + 1)

            async def big_chunks():
                for i in range(0, len(too_big), 256_000):
                    yield too_big[i : i + 256_000]

            resp = await c.post("/api/v1/updates/upload", data=big_chunks(), headers=oct_h)
            assert resp.status == 413
            resp = await c.post("/api/v1/updates/upload", data=too_big, headers=oct_h)
            assert resp.status == 413
            resp = await c.post("/api/v1/updates/upload", json={"a": 1}, headers=h)
            assert resp.status == 415
            resp = await c.post("/api/v1/updates/upload", data=b"", headers=oct_h)
            assert resp.status == 400
            assert len(updater.installed) == 1 and list(uploads.iterdir()) == []
            resp = await c.post("/api/v1/updates/rollback", headers=h)
            assert await resp.json() == {"result": "rolled back to v1", **updater.status()}
            resp = await c.post("/api/v1/updates/check", headers=h)
            assert await resp.json() == {"result": "up to date", **updater.status()}

    asyncio.run(body())


def test_teleop_websocket_drives_and_streams_telemetry(tmp_path):
    async def body():
        async with running_api(tmp_path, **{"api.telemetry_hz": 20}) as api:
            c = api.client
            tok = await api.token()
            await c.post("/api/v1/mode", json={"mode": "manual"}, headers=api.bearer(tok))
            ws = await c.ws_connect("/api/v1/teleop", protocols=ws_protocols(tok))
            telemetry: list[dict] = []

            async def read():
                async for msg in ws:
                    telemetry.append(msg.json())

            reader = asyncio.create_task(read())
            t0 = time.monotonic()
            for _ in range(50):  # 1 s at 50 Hz
                await ws.send_json({"type": "teleop", "action": [0.25, 0.4]})
                await asyncio.sleep(0.02)
            rate = len(telemetry) / (time.monotonic() - t0)
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            assert all(m["type"] == "telemetry" for m in telemetry)
            assert telemetry[-1]["mode"] == "manual" and telemetry[-1]["action"] == [0.25, 0.4]
            writes = [a for _, k, a in api.actuators.snapshot() if k == "write"]
            assert writes and np.allclose(writes[-1], [0.25, 0.4])
            assert 5 <= rate <= 30, rate
            # bad messages get an error and the link stays up
            for bad in ("{", '{"type": "teleop", "action": ["a"]}', '{"type": "fly"}', "[]"):
                await ws.send_str(bad)
            await ws.send_bytes(b"\x00")
            errors = 0
            while errors < 5:
                m = await ws.receive_json(timeout=2)
                errors += m["type"] == "error"
            await ws.send_json({"type": "teleop", "action": [0.1, 0.1, 0.1]})
            while (m := await ws.receive_json(timeout=2))["type"] != "error":
                pass
            assert "2 values" in m["error"]["message"]
            await ws.send_json({"type": "estop", "reason": "button"})
            while (m := await ws.receive_json(timeout=2))["type"] != "estop":
                pass
            assert m["to"] == "estop" and api.daemon.modes.estop_reason == "button"
            await ws.close()

    asyncio.run(body())


@pytest.mark.slow
def test_camera_streams_send_only_new_frames_at_capped_rate(tmp_path):
    async def body():
        async with running_api(tmp_path, **{"api.camera_max_fps": 10}) as api:
            c = api.client
            tok = await api.token()
            ws = await c.ws_connect("/api/v1/camera", protocols=ws_protocols(tok))
            frames = []
            t0 = time.monotonic()
            while time.monotonic() - t0 < 1.5:
                msg = await ws.receive(timeout=2)
                assert msg.type == aiohttp.WSMsgType.BINARY
                frames.append(msg.data)
            await ws.close()
            enc = c.server.app[__import__("edge_agent.api.keys").api.keys.ENCODER]
            encoded_for_ws = enc.encoded
            img = cv2.imdecode(np.frombuffer(frames[0], np.uint8), cv2.IMREAD_COLOR)
            assert img.shape == (120, 160, 3)
            assert 8 <= len(frames) <= 17, len(frames)  # 10 fps cap over 1.5 s
            # One JPEG per new frame (by seq), and only the WebSocket asked so far: a frame sent
            # twice would be a message without its own encode.  (Comparing the bytes is not the
            # check: the idle sim's frames differ only by a noise window, and two of them can
            # draw the same one.)
            assert len(frames) <= encoded_for_ws, (len(frames), encoded_for_ws)
            # MJPEG with the Authorization header (and encoding happened once per frame)
            resp = await c.get("/api/v1/camera.mjpg", headers=api.bearer(tok))
            assert resp.status == 200
            boundary = resp.headers["Content-Type"].split("boundary=")[1]
            data = b""
            while data.count(b"--" + boundary.encode()) < 3:
                data += await resp.content.read(65536)
            resp.close()
            part = data.split(b"\r\n\r\n", 1)[1]
            assert part[:2] == b"\xff\xd8"
            assert enc.encoded <= len(frames) + 5

    asyncio.run(body())

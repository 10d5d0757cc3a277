"""Uploads of exports to `cloud_jobs ingest` over HTTP (resumable) and to a directory.

The exports are real (rlds episodes -> EpisodeStore.export -> manifest with
checksums); the receiver is the real ingest app on a loopback port.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from brain.config import UploaderConfig
from cloud_jobs.ingest import COMPLETE_NAME, INGEST_KEY, make_app
from edge_agent.uploader import UploadError, upload_directory, write_manifest
from rlds.datasets.manifest import MANIFEST_NAME, verify_manifest
from tests.network_helpers import FakeBrain, config_for, record_episodes


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("export")
    cfg = config_for(tmp)
    record_episodes(cfg.episodes_dir(), 4, steps=16)
    res = asyncio.run(FakeBrain(cfg).export_episodes({"format": "rlds"}))
    return Path(res.out_dir)


def total_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in d.rglob("*") if p.is_file())


def copy_tree(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


@contextlib.asynccontextmanager
async def ingest_server(root: Path, token: str | None = None):
    app = make_app(root, token=token)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", app[INGEST_KEY]
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def cutting_proxy(target_port: int, cut_after: int):
    """Forwards TCP to the receiver but drops the connection once ``cut_after`` bytes
    went upstream in total (once); later connections pass untouched."""
    state = {"sent": 0, "cut": False, "connections": 0}

    async def handle(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        state["connections"] += 1
        sr, sw = await asyncio.open_connection("127.0.0.1", target_port)

        async def up() -> None:
            try:
                while data := await cr.read(65536):
                    if not state["cut"] and state["sent"] + len(data) >= cut_after:
                        keep = cut_after - state["sent"]
                        sw.write(data[:keep])
                        await sw.drain()
                        state["sent"] += keep
                        state["cut"] = True
                        await asyncio.sleep(0.1)  # let the receiver read what it got
                        for w in (sw, cw):
                            w.transport.abort()
                        return
                    state["sent"] += len(data)
                    sw.write(data)
                    await sw.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                sw.close()

        async def down() -> None:
            try:
                while data := await sr.read(65536):
                    cw.write(data)
                    await cw.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                cw.close()

        await asyncio.gather(up(), down())

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", state
    finally:
        server.close()


def ucfg(dest: str, **kw) -> UploaderConfig:
    return UploaderConfig(destination=dest, **{"chunk_bytes": 16384, "retries": 3, **kw})


def test_http_upload_is_verified_and_idempotent(tmp_path, export_dir):
    async def body():
        async with ingest_server(tmp_path / "cloud") as (url, ingest):
            rep = await upload_directory(ucfg(url), export_dir, robot_id="bot-1")
            assert rep.ok, rep
            assert rep.bytes_sent == rep.bytes_total == total_bytes(export_dir)
            assert ingest.stats["bytes_received"] == rep.bytes_total
            landed = tmp_path / "cloud" / "bot-1" / rep.name
            assert rep.name.startswith("continuon-")  # the manifest's dataset_id
            assert verify_manifest(landed) == []
            assert (landed / COMPLETE_NAME).exists()
            leftovers = [p for p in (landed / ".partial").rglob("*") if p.is_file()]
            assert leftovers == []
            # Again: everything is there already, nothing is sent.
            again = await upload_directory(ucfg(url), export_dir, robot_id="bot-1")
            assert again.ok and again.bytes_sent == 0
            assert len(again.skipped) == again.files
            assert ingest.stats["bytes_received"] == rep.bytes_total

    asyncio.run(body())


def test_interrupted_upload_resumes_without_resending_stored_bytes(tmp_path, export_dir):
    """The connection drops in the middle of a PUT body; the retry asks the receiver how
    much it holds and sends only the rest: the receiver gets every byte exactly once."""
    total = total_bytes(export_dir)

    async def body():
        async with (
            ingest_server(tmp_path / "cloud") as (url, ingest),
            cutting_proxy(int(url.rsplit(":", 1)[1]), cut_after=total // 2) as (purl, state),
        ):
            rep = await upload_directory(
                ucfg(purl, chunk_bytes=1 << 20), export_dir, robot_id="bot-1"
            )
            assert state["cut"], "the proxy never cut the connection"
            assert rep.ok, rep
            assert rep.resumed, "no file was resumed from an offset"
            (rel, offset) = next(iter(rep.resumed.items()))
            assert 0 < offset < (export_dir / rel).stat().st_size
            assert ingest.stats["bytes_received"] == total  # not one byte twice
            assert verify_manifest(tmp_path / "cloud" / "bot-1" / rep.name) == []

    asyncio.run(body())


def test_upload_cancelled_between_chunks_resumes_from_the_receivers_offset(tmp_path, export_dir):
    total = total_bytes(export_dir)

    class Stop(Exception):
        pass

    def stop_half_way(rel: str, held: int, size: int) -> None:
        if held and ingest_ref[0].stats["bytes_received"] >= total // 2:
            raise Stop

    ingest_ref: list = []

    async def body():
        async with ingest_server(tmp_path / "cloud") as (url, ingest):
            ingest_ref.append(ingest)
            with pytest.raises(Stop):
                await upload_directory(
                    ucfg(url, chunk_bytes=4096),
                    export_dir,
                    robot_id="bot-1",
                    progress=stop_half_way,
                )
            first = ingest.stats["bytes_received"]
            assert total // 2 <= first < total
            rep = await upload_directory(ucfg(url, chunk_bytes=4096), export_dir, robot_id="bot-1")
            assert rep.ok and rep.bytes_sent == total - first
            assert ingest.stats["bytes_received"] == total

    asyncio.run(body())


def corrupt_one(d: Path) -> str:
    manifest = json.loads((d / MANIFEST_NAME).read_text())
    rel = max(manifest["files"], key=lambda r: manifest["files"][r]["bytes"])
    p = d / rel
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, same size: only the checksum can tell
    p.write_bytes(bytes(data))
    return rel


def test_corrupted_file_is_detected_by_the_receiver(tmp_path, export_dir):
    bad = copy_tree(export_dir, tmp_path / "export")
    rel = corrupt_one(bad)

    async def body():
        async with ingest_server(tmp_path / "cloud") as (url, ingest):
            rep = await upload_directory(ucfg(url), bad, robot_id="bot-1")
            assert not rep.ok and rep.mismatched == [rel]
            assert any("checksum mismatch" in e for e in rep.errors)
            assert ingest.stats["mismatches"] == 1
            landed = tmp_path / "cloud" / "bot-1" / rep.name
            assert not (landed / rel).exists()  # never visible under its real name
            assert (landed / ".rejected" / rel).exists()
            assert not (landed / COMPLETE_NAME).exists()
            # The good copy repairs it.
            fixed = await upload_directory(ucfg(url), export_dir, robot_id="bot-1")
            assert fixed.ok and verify_manifest(landed) == []
            assert (landed / COMPLETE_NAME).exists()

    asyncio.run(body())


def test_directory_destination_resumes_and_verifies(tmp_path, export_dir):
    dest = tmp_path / "nas"
    manifest = json.loads((export_dir / MANIFEST_NAME).read_text())
    name = manifest["dataset_id"]
    rel = max(manifest["files"], key=lambda r: manifest["files"][r]["bytes"])
    size = (export_dir / rel).stat().st_size
    # An earlier copy stopped half way through the biggest file.
    part = dest / "bot-1" / name / (rel + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes((export_dir / rel).read_bytes()[: size // 2])

    rep = asyncio.run(upload_directory(ucfg(str(dest)), export_dir, robot_id="bot-1"))
    assert rep.ok, rep
    assert rep.resumed == {rel: size // 2}
    assert rep.bytes_sent == total_bytes(export_dir) - size // 2
    assert verify_manifest(dest / "bot-1" / name) == []
    assert not list((dest / "bot-1").rglob("*.part"))

    again = asyncio.run(upload_directory(ucfg(str(dest)), export_dir, robot_id="bot-1"))
    assert again.ok and again.bytes_sent == 0

    bad = copy_tree(export_dir, tmp_path / "bad-export")
    brel = corrupt_one(bad)
    dest2 = tmp_path / "nas2"
    rep = asyncio.run(upload_directory(ucfg(str(dest2)), bad, robot_id="bot-1"))
    assert not rep.ok and rep.mismatched == [brel]
    landed = dest2 / "bot-1" / name
    assert not (landed / brel).exists() and not (landed / MANIFEST_NAME).exists()


def test_bad_inputs_give_clear_errors(tmp_path, export_dir):
    with pytest.raises(UploadError, match="destination"):
        asyncio.run(upload_directory(UploaderConfig(), export_dir, robot_id="bot-1"))
    with pytest.raises(UploadError, match=r"no manifest\.json"):
        asyncio.run(upload_directory(ucfg(str(tmp_path / "d")), tmp_path, robot_id="bot-1"))
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / MANIFEST_NAME).write_text(
        json.dumps({"files": {"../etc/passwd": {"sha256": "0" * 64, "bytes": 1}}})
    )
    with pytest.raises(UploadError, match="plain relative path"):
        asyncio.run(upload_directory(ucfg(str(tmp_path / "d")), evil, robot_id="bot-1"))
    with pytest.raises(UploadError, match="absolute"):
        asyncio.run(upload_directory(ucfg("relative/dir"), export_dir, robot_id="bot-1"))
    with pytest.raises(ValueError, match="http"):
        UploaderConfig(destination="ftp://example.org/x")


def test_ingest_token_and_protocol_errors(tmp_path, export_dir):
    token_file = tmp_path / "token"
    token_file.write_text("t0k3n\n")

    async def body():
        async with ingest_server(tmp_path / "cloud", token="t0k3n") as (url, _):
            with pytest.raises(UploadError, match="401"):
                await upload_directory(ucfg(url), export_dir, robot_id="bot-1")
            rep = await upload_directory(
                ucfg(url, token_file=token_file), export_dir, robot_id="bot-1"
            )
            assert rep.ok
            auth = {"Authorization": "Bearer t0k3n"}
            async with aiohttp.ClientSession(headers=auth) as s:
                base = f"{url}/uploads/bot-1/other"
                async with s.put(
                    f"{base}/a.bin", data=b"x", headers={"Content-Range": "bytes 0-0/1"}
                ) as r:
                    assert r.status == 409 and "manifest.json first" in (await r.json())["error"]
                async with s.put(
                    f"{base}/{MANIFEST_NAME}", data=b"{}", headers={"Content-Range": "bytes 5-1/2"}
                ) as r:
                    assert r.status == 400
                async with s.put(f"{base}/{MANIFEST_NAME}", data=b"xx") as r:
                    assert r.status == 400 and "Content-Range" in (await r.json())["error"]
                async with s.put(
                    f"{base}/%2E%2E/x", data=b"x", headers={"Content-Range": "bytes 0-0/1"}
                ) as r:
                    assert r.status in (400, 404)
                async with s.put(
                    f"{url}/uploads/bot-1/..hidden/x",
                    data=b"x",
                    headers={"Content-Range": "bytes 0-0/1"},
                ) as r:
                    assert r.status == 400
                body = b'{"files": {}}'
                async with s.put(
                    f"{base}/{MANIFEST_NAME}",
                    data=body[:5],
                    headers={"Content-Range": f"bytes 0-4/{len(body)}"},
                ) as r:
                    assert r.status == 200 and r.headers["Upload-Offset"] == "5"
                async with s.put(
                    f"{base}/{MANIFEST_NAME}",
                    data=body[:5],
                    headers={"Content-Range": f"bytes 0-4/{len(body)}"},
                ) as r:
                    assert r.status == 409 and r.headers["Upload-Offset"] == "5"
            assert not list((tmp_path / "cloud").rglob("x"))

    asyncio.run(body())


@pytest.mark.slow
def test_cloud_jobs_ingest_and_continuon_upload_commands(tmp_path, export_dir):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cloud_jobs",
            "ingest",
            "--dir",
            str(tmp_path / "cloud"),
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode()
                assert time.monotonic() < deadline, "ingest did not start"
                time.sleep(0.1)
        cfg = tmp_path / "robot.yaml"
        cfg.write_text(f"robot: {{id: bot-9}}\npaths: {{state_dir: {tmp_path / 'state'}}}\n")
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "brain.cli",
                "upload",
                str(export_dir),
                "--config",
                str(cfg),
                "--dest",
                f"http://127.0.0.1:{port}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        report = json.loads(out.stdout)
        assert report["ok"] and report["robot_id"] == "bot-9"
        assert verify_manifest(tmp_path / "cloud" / "bot-9" / report["name"]) == []
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_candidate_adapter_directory_gets_a_manifest_and_uploads(tmp_path):
    adapter = tmp_path / "lora-run-7"
    (adapter / "weights").mkdir(parents=True)
    (adapter / "weights" / "adapter.safetensors").write_bytes(bytes(range(256)) * 300)
    (adapter / "config.json").write_text('{"r": 8}')
    (adapter / ".lock").write_text("")
    write_manifest(adapter)
    with pytest.raises(UploadError, match="exists already"):
        write_manifest(adapter)
    rep = asyncio.run(upload_directory(ucfg(str(tmp_path / "nas")), adapter, robot_id="bot-1"))
    assert rep.ok and rep.name == "lora-run-7" and rep.files == 3  # 2 files + manifest
    landed = tmp_path / "nas" / "bot-1" / "lora-run-7"
    assert verify_manifest(landed) == [] and not (landed / ".lock").exists()

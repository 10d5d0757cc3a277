"""``cloud_jobs ingest``: the receiving end of robot uploads (edge_agent/uploader.py).

A small aiohttp server that stores uploads under ``--dir`` as
``<robot_id>/<name>/<path>`` and checks every file against the export's
manifest before it becomes visible.  The protocol, per file:

``HEAD /uploads/<robot>/<name>/<path>``
    ``Upload-Offset``: bytes held (of a partial or a complete file);
    ``Upload-Complete: 1`` once the file was verified; 404 if nothing is held.
``PUT /uploads/<robot>/<name>/<path>``
    ``Content-Range: bytes <first>-<last>/<total>`` (``bytes */0`` for an empty
    file), body = those bytes.  ``first`` must equal the held offset (else 409
    with the offset).  Bytes are appended as they arrive and kept even if the
    connection breaks, so a resumed upload never sends them again.  When the
    file is whole its SHA-256 is compared with the manifest: a match is renamed
    into place (201), a mismatch is moved to ``.rejected/`` and answered 422.
    ``manifest.json`` goes first (409 for any other file before it); it is
    checked against the ``X-Content-SHA256`` header.
``POST /finish/<robot>/<name>``
    ``{"ok", "missing", "mismatched"}``; when ok, ``.complete.json`` is written.

``--token-file``: requests need ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import json
import logging
import os
import re
import shutil
import sys
from pathlib import Path, PurePosixPath
from typing import Any

from aiohttp import web

from common.digest import sha256_file
from common.durable import move, write_json
from rlds.datasets.manifest import MANIFEST_NAME

_log = logging.getLogger("cloud_jobs.ingest")

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
RANGE_RE = re.compile(r"^bytes (?:(\d+)-(\d+)|\*)/(\d+)$")
DEFAULT_MAX_FILE_BYTES = 64 << 30
COMPLETE_NAME = ".complete.json"

STATS_KEY = web.AppKey("ingest_stats", dict)
INGEST_KEY = web.AppKey("ingest", object)


class Ingest:
    def __init__(self, root: Path, token: str | None, max_file_bytes: int) -> None:
        self.root = Path(root)
        self.token = token
        self.max_file_bytes = max_file_bytes
        self.stats: dict[str, int] = {
            "bytes_received": 0,
            "files_completed": 0,
            "mismatches": 0,
        }
        self._locks: dict[str, asyncio.Lock] = {}

    # ------------------------------------------------------------------ helpers

    def authorize(self, request: web.Request) -> None:
        if self.token is None:
            return
        got = request.headers.get("Authorization", "")
        if not hmac.compare_digest(got.encode(), f"Bearer {self.token}".encode()):
            raise _error(401, "a valid bearer token is required")

    def dataset(self, request: web.Request) -> tuple[str, str, Path]:
        robot, name = request.match_info["robot"], request.match_info["name"]
        for what, v in (("robot id", robot), ("upload name", name)):
            if not NAME_RE.match(v):
                raise _error(400, f"bad {what} {v!r}")
        return robot, name, self.root / robot / name

    @staticmethod
    def rel(request: web.Request) -> str:
        rel = request.match_info["rel"]
        p = PurePosixPath(rel)
        if (
            not rel
            or "\\" in rel
            or p.is_absolute()
            or any(part in ("", ".", "..") or part.startswith(".") for part in p.parts)
        ):
            raise _error(400, f"bad file path {rel!r}")
        return rel

    def manifest(self, ds: Path) -> dict[str, Any] | None:
        try:
            return json.loads((ds / MANIFEST_NAME).read_text())
        except FileNotFoundError:
            return None

    def lock(self, key: str) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    # ------------------------------------------------------------------ handlers

    async def head(self, request: web.Request) -> web.StreamResponse:
        self.authorize(request)
        _, _, ds = self.dataset(request)
        rel = self.rel(request)
        final, part = ds / rel, ds / ".partial" / rel
        if final.is_file():
            headers = {"Upload-Offset": str(final.stat().st_size), "Upload-Complete": "1"}
            if rel == MANIFEST_NAME:  # small; lets a changed manifest of that name be re-sent
                headers["Upload-SHA256"] = await asyncio.to_thread(sha256_file, final)
            return web.Response(headers=headers)
        if part.is_file():
            return web.Response(
                headers={"Upload-Offset": str(part.stat().st_size), "Upload-Complete": "0"}
            )
        raise web.HTTPNotFound()

    async def put(self, request: web.Request) -> web.StreamResponse:
        self.authorize(request)
        robot, name, ds = self.dataset(request)
        rel = self.rel(request)
        first, total, declared = self._content_range(request, rel)
        expected_sha = request.headers.get("X-Content-SHA256")
        if rel != MANIFEST_NAME:
            manifest = self.manifest(ds)
            if manifest is None:
                raise _error(409, f"upload {MANIFEST_NAME} first: files are checked against it")
            entry = manifest.get("files", {}).get(rel)
            if entry is None:
                raise _error(400, f"{rel} is not in the manifest")
            expected_sha = entry["sha256"] if isinstance(entry, dict) else entry
            size = entry.get("bytes") if isinstance(entry, dict) else None
            if size is not None and size != total:
                return self._reject(
                    robot,
                    name,
                    rel,
                    f"{rel}: {total} bytes, the manifest says {size}",
                    ds / ".partial" / rel,
                    ds,
                )
        async with self.lock(f"{robot}/{name}/{rel}"):
            final, part = ds / rel, ds / ".partial" / rel
            held = part.stat().st_size if part.is_file() else 0
            if first != held:
                if final.is_file() and not part.is_file():
                    held = final.stat().st_size
                    return web.json_response(
                        {"error": f"{rel} is complete"},
                        status=409,
                        headers={"Upload-Offset": str(held), "Upload-Complete": "1"},
                    )
                return web.json_response(
                    {"error": f"{rel}: expected data from offset {held}, got {first}"},
                    status=409,
                    headers={"Upload-Offset": str(held), "Upload-Complete": "0"},
                )
            got = await self._append(request, part, held, declared, rel)
            held += got
            if held < total:
                return web.Response(
                    status=200 if got == declared else 400,
                    headers={"Upload-Offset": str(held), "Upload-Complete": "0"},
                )
            digest = await asyncio.to_thread(sha256_file, part)
            if expected_sha is not None and digest != expected_sha:
                return self._reject(
                    robot,
                    name,
                    rel,
                    f"{rel}: checksum mismatch: the manifest says {expected_sha}, "
                    f"received data hashes to {digest}",
                    part,
                    ds,
                )
            if rel == MANIFEST_NAME:
                try:
                    files = json.loads(part.read_text()).get("files")
                    if not isinstance(files, dict):
                        raise ValueError("no files table")
                except (ValueError, AttributeError, UnicodeDecodeError) as exc:
                    part.unlink()
                    raise _error(400, f"{MANIFEST_NAME} is not a manifest: {exc}") from None
                self._forget_changed(ds, files)
            final.parent.mkdir(parents=True, exist_ok=True)
            move(part, final)
            with contextlib.suppress(FileNotFoundError):
                (ds / ".rejected" / rel).unlink()  # a good copy replaces a rejected one
            self.stats["files_completed"] += 1
            return web.Response(
                status=201, headers={"Upload-Offset": str(total), "Upload-Complete": "1"}
            )

    def _content_range(self, request: web.Request, rel: str) -> tuple[int, int, int]:
        """(first byte, total size, bytes in this body) from ``Content-Range``; 400/413 if bad."""
        m = RANGE_RE.match(request.headers.get("Content-Range", ""))
        if not m:
            raise _error(400, "Content-Range: bytes FIRST-LAST/TOTAL is required")
        total = int(m.group(3))
        first = int(m.group(1)) if m.group(1) is not None else 0
        last = int(m.group(2)) if m.group(2) is not None else -1
        if total > self.max_file_bytes:
            raise _error(413, f"{rel}: {total} bytes exceeds the limit {self.max_file_bytes}")
        if last >= total or (m.group(1) is not None and last < first):
            raise _error(400, f"Content-Range {first}-{last}/{total} is inconsistent")
        if m.group(1) is None and total != 0:
            raise _error(400, f"Content-Range {first}-{last}/{total} is inconsistent")
        declared = last - first + 1 if m.group(1) is not None else 0
        return first, total, declared

    async def _append(
        self, request: web.Request, part: Path, held: int, declared: int, rel: str
    ) -> int:
        """Append the body to ``part`` (which holds ``held`` bytes); the bytes appended.

        What arrived is kept and fsynced even when the connection breaks; a body
        longer than ``declared`` is cut back to ``held`` and refused.
        """
        part.parent.mkdir(parents=True, exist_ok=True)
        got = 0
        f = open(part, "ab")  # noqa: SIM115 -- closed in finally, after the fsync
        try:
            async for block in request.content.iter_chunked(256 * 1024):
                if got + len(block) > declared:
                    f.truncate(held)
                    got = 0
                    raise _error(400, "body is longer than the Content-Range")
                f.write(block)
                got += len(block)
                self.stats["bytes_received"] += len(block)
        except BaseException as exc:
            # Keep what arrived: it is exactly the next bytes of the file.
            _log.info("%s: upload interrupted after %d bytes (%r)", rel, got, exc)
            raise
        finally:
            f.flush()
            os.fsync(f.fileno())
            f.close()
        return got

    def _forget_changed(self, ds: Path, new_files: dict[str, Any]) -> None:
        """A new manifest under an old name: files whose checksum changed must be re-sent."""
        old = self.manifest(ds)
        if old is None:
            return

        def sha(entry: Any) -> Any:
            return entry.get("sha256") if isinstance(entry, dict) else entry

        with contextlib.suppress(FileNotFoundError):
            (ds / COMPLETE_NAME).unlink()
        for rel, entry in old.get("files", {}).items():
            if sha(new_files.get(rel)) != sha(entry):
                for stale in (ds / rel, ds / ".partial" / rel):
                    with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                        stale.unlink()

    def _reject(
        self, robot: str, name: str, rel: str, message: str, part: Path, ds: Path
    ) -> web.Response:
        _log.error("rejected %s/%s/%s: %s", robot, name, rel, message)
        self.stats["mismatches"] += 1
        if part.is_file():
            dest = ds / ".rejected" / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            move(part, dest)
        return web.json_response({"error": message, "file": rel}, status=422)

    async def finish(self, request: web.Request) -> web.StreamResponse:
        self.authorize(request)
        _, _, ds = self.dataset(request)
        manifest = self.manifest(ds)
        if manifest is None:
            return web.json_response(
                {"ok": False, "error": f"no {MANIFEST_NAME}", "missing": [MANIFEST_NAME]},
                status=409,
            )
        missing: list[str] = []
        mismatched: list[str] = []
        for rel, entry in sorted(manifest.get("files", {}).items()):
            p = ds / rel
            size = entry.get("bytes") if isinstance(entry, dict) else None
            if not p.is_file():
                # Kept on disk, so the answer survives a restart of the receiver.
                (mismatched if (ds / ".rejected" / rel).is_file() else missing).append(rel)
            elif size is not None and p.stat().st_size != size:
                mismatched.append(rel)
        ok = not missing and not mismatched
        if ok:
            write_json(ds / COMPLETE_NAME, {"files": len(manifest.get("files", {}))})
        return web.json_response(
            {"ok": ok, "missing": missing, "mismatched": mismatched},
            status=200 if ok else 409,
        )


def _error(status: int, message: str) -> web.HTTPException:
    cls = {
        400: web.HTTPBadRequest,
        401: web.HTTPUnauthorized,
        409: web.HTTPConflict,
        413: web.HTTPRequestEntityTooLarge,
    }[status]
    if status == 413:
        return cls(
            max_size=0,
            actual_size=0,
            text=json.dumps({"error": message}),
            content_type="application/json",
        )
    return cls(text=json.dumps({"error": message}), content_type="application/json")


def make_app(
    root: Path, *, token: str | None = None, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
) -> web.Application:
    ingest = Ingest(root, token, max_file_bytes)
    app = web.Application()
    app[INGEST_KEY] = ingest
    app[STATS_KEY] = ingest.stats
    path = "/uploads/{robot}/{name}/{rel:.+}"
    app.router.add_route("HEAD", path, ingest.head)
    app.router.add_put(path, ingest.put)
    app.router.add_post("/finish/{robot}/{name}", ingest.finish)
    return app


def cli_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="cloud_jobs ingest",
        description="receive robot uploads (resumable HTTP PUT), verified against the manifest",
    )
    ap.add_argument("--dir", type=Path, required=True, help="where uploads are stored")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on")
    ap.add_argument("--token-file", type=Path, help="require this bearer token")
    ap.add_argument("--max-file-bytes", type=int, default=DEFAULT_MAX_FILE_BYTES)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    token = None
    if args.token_file is not None:
        try:
            token = args.token_file.read_text().strip()
        except OSError as exc:
            print(
                f"cloud_jobs ingest: --token-file {args.token_file}: {exc.strerror}",
                file=sys.stderr,
            )
            return 2
        if not token:
            print(f"cloud_jobs ingest: --token-file {args.token_file} is empty", file=sys.stderr)
            return 2
    args.dir.mkdir(parents=True, exist_ok=True)
    if shutil.disk_usage(args.dir).free < 1 << 20:
        print(f"cloud_jobs ingest: {args.dir} has no free space", file=sys.stderr)
        return 2
    app = make_app(args.dir, token=token, max_file_bytes=args.max_file_bytes)
    with contextlib.suppress(KeyboardInterrupt):
        web.run_app(app, host=args.host, port=args.port, print=lambda m: print(m, flush=True))
    return 0

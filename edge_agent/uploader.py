"""Uploads an export (or a candidate adapter) to the configured destination, resumably.

What is uploaded: a directory holding ``manifest.json`` (rlds/datasets/manifest.py)
whose ``files`` maps each relative path to ``{"sha256": ..., "bytes": ...}``.
Exports have it; a candidate adapter directory needs the same (a plain
``{"files": {path: sha256}}`` is accepted too).

Destinations (``uploader.destination``):

``http://`` / ``https://`` base URL
    served by ``cloud_jobs ingest`` (cloud_jobs/ingest.py).  Per file: HEAD asks how
    many bytes the receiver already holds, then PUTs the rest in ``chunk_bytes``
    pieces with ``Content-Range``; the receiver appends and, at the end, checks the
    file against the manifest (which goes first).  A broken connection costs at
    most the bytes the receiver did not store; network errors and 5xx are retried
    with backoff.  Finally ``POST /finish/...`` asks the receiver whether everything
    arrived intact.
a directory
    each file is copied to ``<file>.part`` (continuing a previous partial copy),
    fsynced, checked against the manifest's checksum, and renamed into place; the
    manifest is written last, so its presence means the upload is complete.

Files land under ``<robot_id>/<name>/`` where ``name`` defaults to the manifest's
``dataset_id`` (or ``adapter_id``, or the directory name).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

import aiohttp

from brain.config import UploaderConfig
from common.backoff import BackoffPolicy
from common.digest import sha256_file
from common.durable import move, write_json
from rlds.datasets.manifest import MANIFEST_NAME

# Waits between the tries of one request (uploader.retries of them): 0.5 s doubling to 30 s.
RETRY_BACKOFF = BackoffPolicy(initial_s=0.5, max_s=30.0)

_log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
Progress = Callable[[str, int, int], None]
"""progress(relative path, bytes the destination holds, file size)."""


class UploadError(RuntimeError):
    """The upload could not be done; the message says what to fix."""


@dataclass
class UploadReport:
    ok: bool
    destination: str
    robot_id: str
    name: str
    files: int = 0
    bytes_total: int = 0
    bytes_sent: int = 0
    skipped: list[str] = field(default_factory=list)  # already complete at the destination
    resumed: dict[str, int] = field(default_factory=dict)  # path -> offset resumed from
    mismatched: list[str] = field(default_factory=list)  # failed the receiver's checksum
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class FileEntry:
    rel: str
    sha256: str
    size: int


def check_rel(rel: str) -> str:
    """A manifest path must stay inside the directory (no .., no absolute paths)."""
    p = PurePosixPath(rel)
    if not rel or p.is_absolute() or any(part in ("", ".", "..") for part in p.parts):
        raise UploadError(f"manifest path {rel!r} is not a plain relative path")
    if "\\" in rel or any(part.startswith(".") for part in p.parts):
        raise UploadError(f"manifest path {rel!r} names a hidden file or uses backslashes")
    return rel


def load_manifest(src: Path) -> tuple[dict[str, Any], list[FileEntry]]:
    path = src / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise UploadError(
            f"{src} has no {MANIFEST_NAME}; only exports and adapters with a "
            "manifest of checksums can be uploaded"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UploadError(f"{path} is not valid JSON: {exc}") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not files:
        raise UploadError(f'{path} has no "files" table of checksums')
    entries = []
    for rel, entry in sorted(files.items()):
        check_rel(rel)
        if rel == MANIFEST_NAME:
            raise UploadError(f"{path} lists itself")
        sha = entry.get("sha256") if isinstance(entry, dict) else entry
        if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise UploadError(f"{path}: {rel} has no valid sha256")
        local = src / rel
        if not local.is_file():
            raise UploadError(f"{src}: {rel} is listed in the manifest but missing")
        size = local.stat().st_size
        if isinstance(entry, dict) and "bytes" in entry and entry["bytes"] != size:
            # Sent anyway: the receiver's check is the one that counts, and reports it.
            _log.warning("%s: size %d differs from the manifest's %s", rel, size, entry["bytes"])
        entries.append(FileEntry(rel, sha, size))
    return manifest, entries


def write_manifest(src: Path, adapter_id: str | None = None) -> Path:
    """Checksum every file of a directory that has no manifest yet (a candidate adapter).

    The receiver then checks what arrives against what was on the robot's disk at
    this moment.  Hidden files are left out; an existing manifest is never replaced.
    """
    src = Path(src)
    path = src / MANIFEST_NAME
    if path.exists():
        raise UploadError(f"{path} exists already; it is not replaced")
    files = {}
    for p in sorted(src.rglob("*")):
        rel = p.relative_to(src).as_posix()
        if p.is_file() and not any(part.startswith(".") for part in rel.split("/")):
            files[rel] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    if not files:
        raise UploadError(f"{src} has no files to upload")
    write_json(path, {"adapter_id": adapter_id or src.name, "files": files})
    return path


def upload_name(manifest: dict[str, Any], src: Path, name: str | None) -> str:
    chosen = name or manifest.get("dataset_id") or manifest.get("adapter_id") or src.name
    if not isinstance(chosen, str) or not NAME_RE.match(chosen):
        raise UploadError(f"upload name {chosen!r}: letters, digits, _ . - (up to 128)")
    return chosen


async def upload_directory(
    cfg: UploaderConfig,
    src: Path,
    *,
    robot_id: str,
    name: str | None = None,
    progress: Progress | None = None,
) -> UploadReport:
    """Upload ``src`` to ``cfg.destination``; never raises for a checksum mismatch (see report)."""
    if not cfg.destination:
        raise UploadError("no upload destination is configured (uploader.destination)")
    if not NAME_RE.match(robot_id):
        raise UploadError(f"robot id {robot_id!r} cannot name an upload")
    src = Path(src)
    manifest, entries = load_manifest(src)
    report = UploadReport(
        ok=False,
        destination=cfg.destination,
        robot_id=robot_id,
        name=upload_name(manifest, src, name),
        files=len(entries) + 1,
        bytes_total=sum(e.size for e in entries) + (src / MANIFEST_NAME).stat().st_size,
    )
    manifest_entry = FileEntry(
        MANIFEST_NAME, sha256_file(src / MANIFEST_NAME), (src / MANIFEST_NAME).stat().st_size
    )
    if cfg.destination.startswith(("http://", "https://")):
        await HttpUpload(cfg, src, report, progress).run(manifest_entry, entries)
    else:
        await asyncio.to_thread(
            _copy_all, Path(cfg.destination), src, report, progress, manifest_entry, entries
        )
    report.ok = not report.mismatched and not report.errors
    log = _log.info if report.ok else _log.error
    log(
        "upload of %s to %s: %s",
        src,
        cfg.destination,
        "ok" if report.ok else f"mismatched {report.mismatched} errors {report.errors}",
    )
    return report


# ----------------------------------------------------------------------------- HTTP


class _Retry(Exception):
    pass


class HttpUpload:
    def __init__(
        self, cfg: UploaderConfig, src: Path, report: UploadReport, progress: Progress | None
    ) -> None:
        self.cfg = cfg
        self.src = src
        self.report = report
        self.progress = progress
        self.base = cfg.destination.rstrip("/") if cfg.destination else ""
        self.headers: dict[str, str] = {}
        if cfg.token_file is not None:
            try:
                token = cfg.token_file.read_text().strip()
            except OSError as exc:
                raise UploadError(f"uploader.token_file {cfg.token_file}: {exc.strerror}") from None
            self.headers["Authorization"] = f"Bearer {token}"

    def url(self, rel: str) -> str:
        r = self.report
        return f"{self.base}/uploads/{quote(r.robot_id)}/{quote(r.name)}/{quote(rel)}"

    async def run(self, manifest_entry: FileEntry, entries: list[FileEntry]) -> None:
        ssl_ctx: ssl.SSLContext | bool = True
        if self.cfg.ca_file is not None:
            ssl_ctx = ssl.create_default_context(cafile=str(self.cfg.ca_file))
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self.cfg.timeout_s, sock_read=self.cfg.timeout_s
        )
        async with aiohttp.ClientSession(
            timeout=timeout, headers=self.headers, connector=aiohttp.TCPConnector(ssl=ssl_ctx)
        ) as session:
            # The manifest first: the receiver checks every later file against it.
            if not await self.send_file(session, manifest_entry):
                return
            for e in entries:
                await self.send_file(session, e)
            await self.finish(session)

    async def send_file(self, session: aiohttp.ClientSession, e: FileEntry) -> bool:
        """True if the receiver has the file intact."""
        for attempt in range(self.cfg.retries + 1):
            try:
                return await self._send_once(session, e, first=attempt == 0)
            except (aiohttp.ClientError, TimeoutError, _Retry) as exc:
                if attempt == self.cfg.retries:
                    self.report.errors.append(f"{e.rel}: gave up after {attempt + 1} tries: {exc}")
                    return False
                delay = RETRY_BACKOFF.delay(attempt + 1)
                _log.warning("upload %s: %s; retrying in %.1f s", e.rel, exc or type(exc), delay)
                await asyncio.sleep(delay)
        return False

    async def _head(self, session: aiohttp.ClientSession, e: FileEntry) -> tuple[int, bool]:
        async with session.head(self.url(e.rel)) as resp:
            if resp.status == 404:
                return 0, False
            await self._check(resp, e)
            complete = resp.headers.get("Upload-Complete") == "1"
            remote_sha = resp.headers.get("Upload-SHA256")
            if complete and remote_sha is not None and remote_sha != e.sha256:
                return 0, False  # a different file under that name: send ours
            return int(resp.headers.get("Upload-Offset", "0")), complete

    async def _check(self, resp: aiohttp.ClientResponse, e: FileEntry) -> None:
        if resp.status >= 500:
            raise _Retry(f"HTTP {resp.status} from the receiver")
        if resp.status in (401, 403):
            raise UploadError(
                f"the receiver refused the upload (HTTP {resp.status}); check uploader.token_file"
            )
        if resp.status >= 400 and resp.status not in (409, 422):
            text = (await resp.text())[:300] if resp.method != "HEAD" else ""
            raise UploadError(f"{e.rel}: HTTP {resp.status} {text}")

    async def _send_once(self, session: aiohttp.ClientSession, e: FileEntry, first: bool) -> bool:
        offset, complete = await self._head(session, e)
        if complete:
            if offset == e.size:
                self.report.skipped.append(e.rel)
                return True
            offset = 0  # a different file of that name: the receiver replaces it
        elif offset > e.size:
            offset = 0
        if offset and e.rel not in self.report.resumed:
            self.report.resumed[e.rel] = offset
        if self.progress:
            self.progress(e.rel, offset, e.size)
        while True:
            n = min(self.cfg.chunk_bytes, e.size - offset)
            headers = {
                "X-Content-SHA256": e.sha256,
                "Content-Range": f"bytes {offset}-{offset + n - 1}/{e.size}"
                if n
                else f"bytes */{e.size}",
                "Content-Length": str(n),
                "Content-Type": "application/octet-stream",
            }
            async with session.put(
                self.url(e.rel), data=self._reader(e.rel, offset, n), headers=headers
            ) as resp:
                if resp.status == 409 and "Upload-Offset" in resp.headers:
                    offset = int(resp.headers["Upload-Offset"])  # the receiver knows better
                    if resp.headers.get("Upload-Complete") == "1" and offset == e.size:
                        return True
                    if offset > e.size:
                        raise UploadError(f"{e.rel}: the receiver holds more than the file")
                    continue
                if resp.status == 409:
                    body = await _json(resp)
                    raise UploadError(f"{e.rel}: {body.get('error', 'HTTP 409')}")
                if resp.status == 422:
                    body = await _json(resp)
                    self.report.mismatched.append(e.rel)
                    self.report.errors.append(f"{e.rel}: {body.get('error', 'rejected')}")
                    return False
                await self._check(resp, e)
                self.report.bytes_sent += n
                offset = int(resp.headers.get("Upload-Offset", offset + n))
            if self.progress:
                self.progress(e.rel, offset, e.size)
            if offset >= e.size:
                return True

    async def _reader(self, rel: str, offset: int, n: int) -> AsyncIterator[bytes]:
        with open(self.src / rel, "rb") as f:
            f.seek(offset)
            left = n
            while left > 0:
                # Read off the event loop: an SD card read can stall for milliseconds.
                block = await asyncio.to_thread(f.read, min(256 * 1024, left))
                if not block:
                    raise UploadError(f"{rel} shrank while being uploaded")
                left -= len(block)
                yield block

    async def finish(self, session: aiohttp.ClientSession) -> None:
        r = self.report
        url = f"{self.base}/finish/{quote(r.robot_id)}/{quote(r.name)}"
        for attempt in range(self.cfg.retries + 1):
            try:
                async with session.post(url) as resp:
                    if resp.status >= 500 and attempt < self.cfg.retries:
                        raise _Retry(f"HTTP {resp.status}")
                    body = await _json(resp)
                    for rel in body.get("mismatched", []):
                        if rel not in r.mismatched:
                            r.mismatched.append(rel)
                    missing = body.get("missing", [])
                    if missing:
                        r.errors.append(f"the receiver is missing {missing}")
                    if resp.status >= 400 and not (missing or body.get("mismatched")):
                        r.errors.append(f"finish: HTTP {resp.status} {body.get('error', '')}")
                    return
            except (aiohttp.ClientError, TimeoutError, _Retry) as exc:
                if attempt == self.cfg.retries:
                    r.errors.append(f"finish: {exc}")
                    return
                await asyncio.sleep(RETRY_BACKOFF.delay(attempt + 1))


async def _json(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    try:
        body = await resp.json(content_type=None)
    except (json.JSONDecodeError, aiohttp.ContentTypeError, UnicodeDecodeError):
        return {"error": f"HTTP {resp.status}"}
    return body if isinstance(body, dict) else {}


# ----------------------------------------------------------------------------- directory


def _copy_all(
    dest: Path,
    src: Path,
    report: UploadReport,
    progress: Progress | None,
    manifest_entry: FileEntry,
    entries: list[FileEntry],
) -> None:
    if not dest.is_absolute():
        raise UploadError(f"uploader.destination {dest} must be an absolute directory or a URL")
    root = dest / report.robot_id / report.name
    root.mkdir(parents=True, exist_ok=True)
    for e in entries:
        _copy_one(src, root, e, report, progress)
    if report.mismatched or report.errors:
        return  # no manifest: the destination shows the upload is incomplete
    _copy_one(src, root, manifest_entry, report, progress)


def _copy_one(
    src: Path, root: Path, e: FileEntry, report: UploadReport, progress: Progress | None
) -> None:
    final = root / e.rel
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.is_file() and final.stat().st_size == e.size and sha256_file(final) == e.sha256:
        report.skipped.append(e.rel)
        return
    part = final.with_name(final.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    if have > e.size:
        have = 0
    if have:
        report.resumed[e.rel] = have
    chunk = 1 << 20
    with open(src / e.rel, "rb") as fin, open(part, "r+b" if have else "wb") as fout:
        fout.truncate(have)
        fin.seek(have)
        fout.seek(have)
        while block := fin.read(chunk):
            fout.write(block)
            report.bytes_sent += len(block)
            have += len(block)
            if progress:
                progress(e.rel, have, e.size)
        fout.flush()
        os.fsync(fout.fileno())
    # The receiving side's check: read back what landed on the destination's disk.
    got = sha256_file(part)
    if got != e.sha256:
        with contextlib.suppress(FileNotFoundError):
            part.unlink()  # the next attempt copies it afresh
        report.mismatched.append(e.rel)
        report.errors.append(
            f"{e.rel}: checksum {got[:12]}… differs from the manifest's {e.sha256[:12]}…"
        )
        return
    move(part, final)


# ----------------------------------------------------------------------------- CLI


def register_cli(sub: Any, add_config: Any) -> None:
    p = sub.add_parser(
        "upload", help="upload an export or adapter directory (with a manifest) to the cloud"
    )
    add_config(p)
    p.add_argument("directory", type=Path, help="directory holding manifest.json")
    p.add_argument("--dest", help="override uploader.destination (URL or directory)")
    p.add_argument("--name", help="upload name (default: the manifest's dataset_id)")
    p.add_argument(
        "--make-manifest",
        action="store_true",
        help="first checksum a directory that has no manifest.json (a candidate adapter)",
    )
    p.set_defaults(func=_cli_upload)


def _cli_upload(args: Any) -> int:
    import sys

    config = args.load_config()
    cfg = config.uploader
    if args.dest:
        cfg = cfg.model_copy(update={"destination": args.dest})
    try:
        if args.make_manifest and not (args.directory / MANIFEST_NAME).exists():
            write_manifest(args.directory, args.name)
        report = asyncio.run(
            upload_directory(cfg, args.directory, robot_id=config.robot.id, name=args.name)
        )
    except UploadError as exc:
        print(f"continuon upload: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report.as_dict(), indent=2))
    return 0 if report.ok else 1

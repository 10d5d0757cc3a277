"""Turning interrupted episodes into committed (truncated) ones after a crash.

An episode directory without ``episode.json`` was being recorded when the
process or the power died.  Its step file is a sequence of valid records
followed, possibly, by a torn one.  Recovery keeps every record up to the last
valid CRC (and well-formed header), cuts the rest off, fsyncs, and commits
``episode.json`` with ``truncated=true, status="recovered"`` and a note of how
many bytes were dropped.  The step held back in the writer's memory at the
moment of the crash is gone; everything that reached the disk is kept.

An episode shorter than ``min_steps`` is not worth training on, but it is still
somebody's data: it is moved to ``<root>/.discarded/`` and reported, never
deleted.

Crash windows handled:

* during creation (``open.json`` missing or unreadable): no metadata, discarded;
* during recording: truncated and committed as above;
* during commit, before the rename: ``episode.json.tmp`` exists.  If it is
  complete and matches the step file byte for byte (size and sha256) the commit
  is finished as the writer intended (status "complete"); otherwise it is a
  partial temp file, removed, and the episode is recovered from the steps;
* during commit, after the rename: ``episode.json`` and a stale ``open.json``;
  the leftover is removed (the committed episode itself is not touched).

Recovery is idempotent, never modifies a committed episode's data, and skips an
episode whose step file is locked by a live writer (a daemon still recording).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.durable import fsync_dir, move, read_json, write_json
from rlds import metadata as schema
from rlds import record, tfrecord
from rlds.layout import (
    DISCARDED_DIR,
    EPISODE_FILE,
    OPEN_FILE,
    RESERVE_FILE,
    STEPS_FILE,
    TMP_SUFFIX,
    episode_dirs,
    is_committed,
    utc_iso,
)
from rlds.locks import episode_lock

RECOVERED = "recovered"
DISCARDED = "discarded"
FINISHED_COMMIT = "finished-commit"
SKIPPED_LOCKED = "skipped-locked"


@dataclass(slots=True)
class RecoveryReport:
    """What recovery did to one episode directory."""

    episode_id: str
    action: str  # recovered | discarded | finished-commit | skipped-locked
    path: Path  # where the episode is now
    num_steps: int = 0
    bytes_kept: int = 0
    bytes_dropped: int = 0
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        s = f"{self.episode_id}: {self.action}, {self.num_steps} steps"
        if self.bytes_dropped:
            s += f", {self.bytes_dropped} bytes dropped"
        if self.reason:
            s += f" ({self.reason})"
        return s + f" -> {self.path}"


@dataclass(slots=True)
class _Scan:
    num_steps: int = 0
    good_end: int = 0
    file_size: int = 0
    first_t: float | None = None
    last_t: float | None = None
    stop: str | None = None  # why scanning stopped before the end of the file


def scan_steps(steps_path: Path) -> _Scan:
    """Count the valid prefix of a step file: good framing, CRCs, headers and indices."""
    s = _Scan()
    try:
        f = open(steps_path, "rb")  # noqa: SIM115 - closed by the `with f:` below
    except FileNotFoundError:
        s.stop = "no step file"
        return s
    with f:
        s.file_size = os.fstat(f.fileno()).st_size
        for item in tfrecord.scan(f):
            if isinstance(item, tfrecord.FrameError):
                s.stop = item.describe(steps_path)
                break
            try:
                header, _ = record.parse_header(item.data)
            except record.RecordError as e:
                s.stop = f"{steps_path}: record {item.index} at byte offset {item.offset}: {e}"
                break
            if header["index"] != item.index:
                s.stop = f"{steps_path}: record {item.index}: step index {header['index']}"
                break
            t = float(header["t"])
            if s.first_t is None:
                s.first_t = t
            s.last_t = t
            s.num_steps += 1
            s.good_end = item.end
    return s


def _sha256_prefix(path: Path, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        left = size
        while left:
            chunk = f.read(min(left, 1 << 20))
            if not chunk:
                break
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


def _discard(root: Path, d: Path) -> Path:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(d / RESERVE_FILE)  # zeros: keeping them in .discarded/ would only cost space
    dest_dir = root / DISCARDED_DIR
    dest_dir.mkdir(exist_ok=True)
    dest = dest_dir / d.name
    n = 1
    while dest.exists():
        dest = dest_dir / f"{d.name}.{n}"
        n += 1
    move(d, dest)
    return dest


def _finish_leftovers(d: Path) -> list[str]:
    """Remove a stale open.json / temp files next to a committed episode.json."""
    removed = []
    for name in (OPEN_FILE, OPEN_FILE + TMP_SUFFIX, EPISODE_FILE + TMP_SUFFIX, RESERVE_FILE):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(d / name)
            removed.append(name)
    if removed:
        fsync_dir(d)
    return removed


def _try_finish_commit(d: Path, steps: Path) -> dict[str, Any] | None:
    """The temp metadata of an interrupted commit, if it is complete and matches the steps."""
    tmp = d / (EPISODE_FILE + TMP_SUFFIX)
    try:
        meta: dict[str, Any] = read_json(tmp)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if schema.check_committed(meta):
        return None
    try:
        size = steps.stat().st_size
    except FileNotFoundError:
        return None
    if size != meta["file_size"] or _sha256_prefix(steps, size) != meta["steps_sha256"]:
        return None
    return meta


def _recover_one(root: Path, d: Path, min_steps: int) -> RecoveryReport:
    steps = d / STEPS_FILE
    tmp_meta = d / (EPISODE_FILE + TMP_SUFFIX)

    if tmp_meta.exists():
        meta = _try_finish_commit(d, steps)
        if meta is not None:
            move(tmp_meta, d / EPISODE_FILE)
            _finish_leftovers(d)
            return RecoveryReport(
                meta["episode_id"],
                FINISHED_COMMIT,
                d,
                num_steps=meta["num_steps"],
                bytes_kept=meta["file_size"],
                reason="crash during commit; temp metadata complete and matching",
            )
        os.unlink(tmp_meta)  # partial metadata: it is re-derived from the steps below
        fsync_dir(d)

    try:
        start = read_json(d / OPEN_FILE)
        problems = schema.check_start(start)
    except FileNotFoundError:
        start, problems = None, [f"no {OPEN_FILE}"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        start, problems = None, [f"unreadable {OPEN_FILE}: {e}"]

    scan = scan_steps(steps)
    episode_id = start["episode_id"] if isinstance(start, dict) and not problems else d.name
    if problems or scan.num_steps < min_steps:
        reason = (
            f"no usable start metadata: {'; '.join(problems)}"
            if problems
            else f"{scan.num_steps} valid steps < min_steps={min_steps}"
        )
        dest = _discard(root, d)
        return RecoveryReport(
            episode_id,
            DISCARDED,
            dest,
            num_steps=scan.num_steps,
            bytes_kept=0,
            bytes_dropped=0,
            reason=reason,
            details={"scan_stop": scan.stop},
        )

    assert start is not None and scan.first_t is not None and scan.last_t is not None
    dropped = scan.file_size - scan.good_end
    if dropped:
        fd = os.open(steps, os.O_WRONLY)
        try:
            os.ftruncate(fd, scan.good_end)
            os.fsync(fd)
        finally:
            os.close(fd)
    why = start.get("abort_reason") or "interrupted (crash or power loss)"
    duration = scan.last_t - scan.first_t
    meta = {
        **start,
        "status": schema.STATUS_RECOVERED,
        "truncated": True,
        "terminal": False,
        "num_steps": scan.num_steps,
        "start_t": scan.first_t,
        "end_t": scan.last_t,
        "duration_s": duration,
        "end_utc": utc_iso(float(start["start_wall"]) + duration),
        "end_utc_estimated": True,
        "file_size": scan.good_end,
        "steps_sha256": _sha256_prefix(steps, scan.good_end),
        "recovery": {
            "reason": why,
            "bytes_dropped": dropped,
            "scan_stop": scan.stop,
            "recovered_utc": utc_iso(time.time()),
        },
    }
    with contextlib.suppress(FileNotFoundError):
        os.unlink(d / RESERVE_FILE)  # the writer set it aside for this commit, on a full disk
    write_json(d / EPISODE_FILE, meta, tmp_name=EPISODE_FILE + TMP_SUFFIX)
    _finish_leftovers(d)
    return RecoveryReport(
        episode_id,
        RECOVERED,
        d,
        num_steps=scan.num_steps,
        bytes_kept=scan.good_end,
        bytes_dropped=dropped,
        reason=why,
        details={"scan_stop": scan.stop},
    )


def recover(root: Path, *, min_steps: int = 10) -> list[RecoveryReport]:
    """Recover or discard every interrupted episode under ``root``; report each action."""
    root = Path(root)
    reports: list[RecoveryReport] = []
    for d in episode_dirs(root):
        steps = d / STEPS_FILE
        with episode_lock(steps) as free:
            if not free:
                reports.append(
                    RecoveryReport(d.name, SKIPPED_LOCKED, d, reason="a live writer holds it")
                )
                continue
            if is_committed(d):
                removed = _finish_leftovers(d)
                if removed:
                    reports.append(
                        RecoveryReport(
                            d.name,
                            FINISHED_COMMIT,
                            d,
                            reason=f"crash after commit; removed {', '.join(removed)}",
                        )
                    )
                continue
            reports.append(_recover_one(root, d, min_steps))
    return reports

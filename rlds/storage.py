"""Disk budget for recordings: a free-space floor, an optional quota, and eviction.

A robot that fills its SD card stops logging, and then stops booting properly,
so recording refuses to start below a free-space floor (``can_start``), and an
optional quota caps what episodes may occupy.  Making room (``evict``) only ever
removes episodes that have been *exported* -- marked by ``exports.json`` in the
episode directory, written atomically by ``mark_exported`` after an export has
finished -- oldest first.  An unexported, interrupted or in-progress episode is
never evicted: losing data that exists nowhere else is worse than refusing to
record.

Deletion is crash-safe: the directory is first renamed into ``<root>/.trash/``
(atomic), then removed; a crash halfway leaves only trash, which the next
eviction or deletion empties.

``.discarded/`` (interrupted episodes too short to keep) is bounded too: once
it is over a size cap or its entries are older than an age limit, the oldest
go first (``purge_discarded``).  They were never committed and never exported,
so the cap is a person's decision in the config, not a silent default of zero.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.durable import fsync_dir, move, read_json, write_json
from rlds.errors import EpisodeError
from rlds.layout import (
    DISCARDED_DIR,
    EPISODE_FILE,
    EXPORTS_FILE,
    OPEN_FILE,
    STEPS_FILE,
    TRASH_DIR,
    episode_dirs,
    is_committed,
    is_episode_dir,
    utc_iso,
)
from rlds.locks import episode_lock


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def dir_size(path: Path) -> int:
    """Total size in bytes of the regular files under ``path``."""
    total = 0
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(path):
            with contextlib.suppress(FileNotFoundError):
                if entry.is_dir(follow_symlinks=False):
                    total += dir_size(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
    return total


# ---------------------------------------------------------------------- export marks


def read_exports(episode_path: Path) -> list[dict[str, Any]]:
    """The export records of an episode ([] if none or unreadable)."""
    try:
        data = read_json(Path(episode_path) / EXPORTS_FILE)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return []
    exports = data.get("exports") if isinstance(data, dict) else None
    return [e for e in exports if isinstance(e, dict)] if isinstance(exports, list) else []


def is_exported(episode_path: Path) -> bool:
    return bool(read_exports(episode_path))


def mark_exported(episode_path: Path, format: str, out_dir: Path | str) -> None:
    """Record (atomically) that a committed episode was exported to ``out_dir`` as ``format``."""
    episode_path = Path(episode_path)
    if not is_committed(episode_path):
        raise EpisodeError(f"{episode_path}: only committed episodes can be marked exported")
    exports = read_exports(episode_path)
    exports.append({"format": str(format), "out_dir": str(out_dir), "utc": utc_iso(time.time())})
    write_json(episode_path / EXPORTS_FILE, {"exports": exports})


# ---------------------------------------------------------------------- deletion


def _empty_trash(root: Path) -> None:
    trash = root / TRASH_DIR
    if trash.is_dir():
        for p in trash.iterdir():
            shutil.rmtree(p, ignore_errors=True)


def _remove_dir(root: Path, path: Path) -> None:
    """Rename into ``.trash/`` (atomic), then remove: a crash halfway leaves only trash."""
    trash = root / TRASH_DIR
    trash.mkdir(exist_ok=True)
    dest = trash / f"{path.name}-{os.urandom(4).hex()}"
    move(path, dest)
    shutil.rmtree(dest, ignore_errors=True)


@dataclass(frozen=True, slots=True)
class PurgedEntry:
    name: str
    bytes: int
    age_s: float


def purge_discarded(
    root: Path,
    *,
    max_bytes: int | None = None,
    max_age_s: float | None = None,
    now: float | None = None,
) -> list[PurgedEntry]:
    """Remove entries of ``<root>/.discarded/``: older than ``max_age_s``, then oldest first
    until the rest fits in ``max_bytes`` (0 empties it).  None means no limit of that kind.

    Age is the entry's modification time (when it was discarded, or last written).
    Returns what was removed, oldest first.
    """
    root = Path(root)
    base = root / DISCARDED_DIR
    if not base.is_dir():
        return []
    now = time.time() if now is None else now
    entries = []
    for p in base.iterdir():
        try:
            mtime = p.stat(follow_symlinks=False).st_mtime
        except FileNotFoundError:
            continue
        size = dir_size(p) if p.is_dir() and not p.is_symlink() else 0
        entries.append((mtime, p.name, p, size))
    entries.sort()
    total = sum(e[3] for e in entries)
    purged: list[PurgedEntry] = []
    for mtime, name, p, size in entries:
        too_old = max_age_s is not None and now - mtime > max_age_s
        too_big = max_bytes is not None and total > max_bytes
        if not (too_old or too_big):
            continue
        if p.is_dir() and not p.is_symlink():
            _remove_dir(root, p)
        else:
            p.unlink()
        total -= size
        purged.append(PurgedEntry(name, size, now - mtime))
    if purged:
        fsync_dir(base)
    return purged


def delete_episode(path: Path) -> None:
    """Delete one episode directory (committed or interrupted), crash-safely.

    Refuses a directory that is not an episode, and one a live writer holds.
    """
    path = Path(path)
    if not is_episode_dir(path):
        raise EpisodeError(f"{path}: not an episode directory; refusing to delete it")
    root = path.parent
    with episode_lock(path / STEPS_FILE) as free:
        if not free:
            raise EpisodeError(f"{path}: being recorded (its step file is locked)")
        _remove_dir(root, path)


# ---------------------------------------------------------------------- budget


@dataclass(frozen=True, slots=True)
class StorageUsage:
    root: Path
    used_bytes: int  # everything under root (episodes, discarded, trash)
    free_bytes: int  # free on the filesystem, for unprivileged users
    quota_bytes: int | None
    min_free_bytes: int
    episodes: int  # committed
    exported: int  # committed and exported (evictable)
    exported_bytes: int
    interrupted: int  # in progress or awaiting recovery


class StorageBudget:
    """The recording budget of one episode root."""

    def __init__(self, root: Path, *, quota_bytes: int | None, min_free_bytes: int) -> None:
        if quota_bytes is not None and quota_bytes < 0:
            raise ValueError("quota_bytes must be >= 0 or None")
        if min_free_bytes < 0:
            raise ValueError("min_free_bytes must be >= 0")
        self.root = Path(root)
        self.quota_bytes = quota_bytes
        self.min_free_bytes = int(min_free_bytes)

    def _free(self) -> int:
        self.root.mkdir(parents=True, exist_ok=True)
        return shutil.disk_usage(self.root).free

    def free_bytes(self) -> int:
        """Free space on the episodes' filesystem (one statvfs)."""
        return self._free()

    def usage(self) -> StorageUsage:
        episodes = exported = exported_bytes = interrupted = 0
        for d in episode_dirs(self.root):
            if is_committed(d):
                episodes += 1
                if is_exported(d):
                    exported += 1
                    exported_bytes += dir_size(d)
            else:
                interrupted += 1
        return StorageUsage(
            root=self.root,
            used_bytes=dir_size(self.root),
            free_bytes=self._free(),
            quota_bytes=self.quota_bytes,
            min_free_bytes=self.min_free_bytes,
            episodes=episodes,
            exported=exported,
            exported_bytes=exported_bytes,
            interrupted=interrupted,
        )

    def free_ok(self) -> bool:
        """Free space is at or above the floor (one statvfs: cheap enough to ask often)."""
        return self._free() >= self.min_free_bytes

    def check_room(self) -> str | None:
        """Why a new episode may not start now (below the floor, over the quota), or None.

        Cheaper than ``can_start`` (no per-episode export scan): asked before every episode.
        """
        free = self._free()
        if free < self.min_free_bytes:
            return (
                f"free space on {self.root} is {_human(free)}, below the floor of "
                f"{_human(self.min_free_bytes)}"
            )
        if self.quota_bytes is not None:
            used = dir_size(self.root)
            if used >= self.quota_bytes:
                return (
                    f"recordings under {self.root} use {_human(used)}, at or over the quota "
                    f"of {_human(self.quota_bytes)}"
                )
        return None

    def can_start(self) -> tuple[bool, str]:
        """Whether a new recording may start now, and a sentence saying why (not)."""
        problem = self.check_room()
        u = self.usage()
        if problem is not None:
            evictable = (
                f"; {u.exported} exported episodes ({_human(u.exported_bytes)}) could be evicted"
                if u.exported
                else "; no exported episodes to evict: export some first"
            )
            return False, problem + evictable
        quota = "no quota" if self.quota_bytes is None else f"quota {_human(self.quota_bytes)}"
        return True, (
            f"ok: {_human(u.free_bytes)} free (floor {_human(self.min_free_bytes)}), "
            f"{_human(u.used_bytes)} used ({quota})"
        )

    def _over(self, used: int, needed: int) -> bool:
        if self.quota_bytes is not None and used + needed > self.quota_bytes:
            return True
        return self._free() - needed < self.min_free_bytes

    def evict(self, needed_bytes: int = 0) -> list[str]:
        """Delete exported episodes, oldest first, until ``needed_bytes`` more fit.

        "Fit" means under the quota (if any) and above the free-space floor.
        Returns the evicted episode ids; stops early, with what it could do, when
        no exported episode is left.  Never touches an unexported, interrupted
        or in-progress episode.
        """
        _empty_trash(self.root)
        used = dir_size(self.root)
        evicted: list[str] = []
        if not self._over(used, needed_bytes):
            return evicted
        candidates = []
        for d in episode_dirs(self.root):
            if not is_committed(d) or (d / OPEN_FILE).exists() or not is_exported(d):
                continue
            try:
                start = read_json(d / EPISODE_FILE).get("start_utc", "")
            except (OSError, ValueError, AttributeError):
                continue
            candidates.append((str(start), d.name, d))
        for _, name, d in sorted(candidates):
            size = dir_size(d)
            try:
                delete_episode(d)
            except (EpisodeError, OSError):
                continue
            evicted.append(name)
            used -= size
            if not self._over(used, needed_bytes):
                break
        return evicted

"""Durable file operations: atomic JSON writes, directory fsync, file locks.

A metadata file must be either the old version or the new one after a crash,
never half of each, so it is written to ``<name>.tmp``, fsynced, renamed over the
target and the directory is fsynced (the rename is only durable once the
directory entry is on disk).

The writer holds an exclusive ``flock`` on its step file for the episode's life.
Recovery, eviction and deletion take the same lock without blocking and skip
an episode whose lock is held, so running ``recover`` from the CLI while the
daemon records cannot truncate and commit a live episode.  The kernel drops the
lock when the process dies (even by SIGKILL), so a crashed writer never leaves
an episode locked.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

try:  # POSIX only; the robot and CI are Linux.
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX
    fcntl = None  # type: ignore[assignment]

TMP_SUFFIX = ".tmp"


def fsync_dir(path: Path) -> None:
    """Make renames/creations/unlinks inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write temp, fsync, rename over ``path``, fsync the directory."""
    tmp = path.with_name(path.name + TMP_SUFFIX)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def replace_file(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data``: the old or the new content after a crash, never half.

    Unlike :func:`atomic_write_bytes` the temporary file has a unique name
    (``.<name>.XXXX.tmp``), so two writers never share it, and it is removed if
    anything fails; ``mode`` is set before the rename, so a private file (0600)
    is never readable by others, not even for a moment.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_json(path: Path, obj: Any) -> None:
    """``atomic_write_bytes`` of pretty, key-sorted JSON (no NaN: metadata must be strict JSON)."""
    text = json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks (model files and episodes can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def try_lock(fd: int) -> bool:
    """Take an exclusive flock on ``fd`` without blocking; False if someone else holds it."""
    if fcntl is None:  # pragma: no cover
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextlib.contextmanager
def episode_lock(steps_path: Path) -> Iterator[bool]:
    """Yield True while holding the step file's lock, False if a live writer holds it.

    A missing step file yields True (nothing can be writing it).
    """
    try:
        fd = os.open(steps_path, os.O_RDONLY)
    except FileNotFoundError:
        yield True
        return
    try:
        yield try_lock(fd)
    finally:
        os.close(fd)  # closing releases the lock

"""Episode locks: who may touch an episode directory while a writer may be recording it.

The writer holds an exclusive ``flock`` on its step file for the episode's life.
Recovery, eviction and deletion take the same lock without blocking and skip
an episode whose lock is held, so running ``recover`` from the CLI while the
daemon records cannot truncate and commit a live episode.  The kernel drops the
lock when the process dies (even by SIGKILL), so a crashed writer never leaves
an episode locked.  (Durable writes themselves are ``common.durable``.)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

try:  # POSIX only; the robot and CI are Linux.
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX
    fcntl = None  # type: ignore[assignment]


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

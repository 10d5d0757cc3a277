"""One updater at a time: an fcntl lock on a file in the updater's directory.

Why flock and not a PID file: the kernel drops the lock when its holder dies,
even by SIGKILL, so a crashed updater never blocks the next one, and two
processes (the daemon and ``continuon ota install`` run by hand) can never
both write the slots.  The holder's PID is written into the file only to name
it in the error message.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

LOCK_FILE = "updater.lock"


class UpdaterBusy(RuntimeError):
    """Another updater holds the lock."""


class UpdaterLock:
    """A non-blocking exclusive lock; use as a context manager or acquire()/release()."""

    def __init__(self, root: Path):
        self.path = Path(root) / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> UpdaterLock:
        if self._fd is not None:
            raise UpdaterBusy(f"{self.path} is already held by this updater")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = ""
            with contextlib.suppress(OSError, ValueError):
                holder = os.pread(fd, 32, 0).decode().strip()
            os.close(fd)
            who = f" (pid {holder})" if holder else ""
            raise UpdaterBusy(
                f"another updater is running{who}: {self.path} is locked; "
                "with the daemon running, use `continuon ota ...`, which goes through it"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> UpdaterLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

"""Why recording stopped by itself, in words a person can act on.

A write error does not go away by retrying on the next tick: a full disk stays
full, a quota stays exceeded, a card remounted read-only after I/O errors stays
read-only.  So the recorder stops at the first one (committing what is on disk),
and this record of the fault is what status and the companion app show until it
clears: by itself when it was about space and space is back, otherwise when
someone starts recording again.
"""

from __future__ import annotations

import errno
import time
from dataclasses import asdict, dataclass
from typing import Any

from rlds.layout import utc_iso

DISK_FULL = "disk_full"  # ENOSPC: the filesystem is full
QUOTA = "quota_exceeded"  # EDQUOT: the user's disk quota (invisible to statvfs)
LOW_SPACE = "low_space"  # our own floor (recording.min_free_mb / quota_gb): nothing failed yet
DISK_ERROR = "disk_error"  # EIO, EROFS, EFBIG, EACCES ...: the disk or its permissions
ERROR = "error"  # anything else: a bug, logged once with its traceback

_NAMES = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EIO: "I/O error (failing card or disk?)",
    errno.EROFS: "the filesystem is read-only (remounted after errors?)",
    errno.EFBIG: "the file is too large for this filesystem",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


@dataclass(frozen=True, slots=True)
class RecordingFault:
    kind: str
    message: str
    episode_id: str | None  # the episode it ended (committed as truncated where possible)
    utc: str

    @property
    def clears_with_space(self) -> bool:
        """Free space coming back ends it (ENOSPC, our floor); not a quota or an I/O error."""
        return self.kind in (DISK_FULL, LOW_SPACE)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def os_error_of(exc: BaseException | None) -> OSError | None:
    """The OSError behind ``exc`` (the writer wraps them in EpisodeError), if any."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError):
            return exc
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def kind_of(exc: BaseException) -> str:
    err = os_error_of(exc)
    if err is None:
        return ERROR
    if err.errno == errno.ENOSPC:
        return DISK_FULL
    if err.errno == errno.EDQUOT:
        return QUOTA
    return DISK_ERROR


def describe(exc: BaseException) -> str:
    """A few words on what went wrong: the errno's meaning and name (no paths: the app shows it)."""
    err = os_error_of(exc)
    if err is not None and err.errno is not None:
        name = errno.errorcode.get(err.errno, str(err.errno))
        return f"{_NAMES.get(err.errno, err.strerror or 'OS error')} ({name})"
    return f"{type(exc).__name__}: {exc}"


def new_fault(kind: str, message: str, episode_id: str | None) -> RecordingFault:
    return RecordingFault(kind, message, episode_id, utc_iso(time.time()))

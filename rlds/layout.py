"""Where things live on disk: episode ids, directory and file names.

Kept in one place so that the writer, reader, recovery, validation and storage
agree on names, and so that the format document has one source to match.

Episode ids are ``YYYYMMDDTHHMMSSZ-<8 hex>``: the UTC start time to the second
followed by 32 random bits.  Lexicographic order is start order (to the second),
ids from different robots or boots cannot collide in practice, and a directory
listing is readable by a person.
"""

from __future__ import annotations

import os
import re
import time
from datetime import UTC, datetime
from pathlib import Path

STEPS_FILE = "steps.tfrecord"
OPEN_FILE = "open.json"
EPISODE_FILE = "episode.json"
EXPORTS_FILE = "exports.json"
# open.json and episode.json are replaced through <name>.tmp, a fixed name, so that
# recovery can finish a commit that a crash interrupted after the temporary was fsynced.
TMP_SUFFIX = ".tmp"
# Zero-filled space set aside when an episode starts and freed just before its
# metadata is written, so that an episode can still be committed when the disk fills.
RESERVE_FILE = "commit.reserve"
DISCARDED_DIR = ".discarded"
TRASH_DIR = ".trash"

FORMAT_NAME = "continuon-rlds-episode"
FORMAT_VERSION = 1

EPISODE_ID_RE = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{8}$")


def utc_iso(ts: float) -> str:
    """Wall-clock seconds since the epoch as ISO 8601 UTC with microseconds."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_episode_id(now: float | None = None) -> str:
    ts = time.time() if now is None else now
    stamp = datetime.fromtimestamp(ts, UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{os.urandom(4).hex()}"


def is_episode_dir(path: Path) -> bool:
    """An episode directory: not hidden, and holds at least one of our files.

    One that vanishes while it is looked at (a concurrent delete moves it to the trash) is
    not one: listing the episodes must not fail because another request deleted one.
    """
    if path.name.startswith("."):
        return False
    try:
        if not path.is_dir():
            return False
        names = (EPISODE_FILE, OPEN_FILE, STEPS_FILE)
        return any((path / name).exists() for name in names) or any(
            p.name.startswith((OPEN_FILE, EPISODE_FILE)) for p in path.iterdir()
        )
    except (FileNotFoundError, NotADirectoryError):
        return False


def episode_dirs(root: Path) -> list[Path]:
    """Every episode directory under ``root``, in name (= start time) order."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if is_episode_dir(p))


def is_committed(path: Path) -> bool:
    return (Path(path) / EPISODE_FILE).is_file()

"""The episode metadata schema: what ``open.json`` and ``episode.json`` hold.

User metadata (robot, config, software version, tags, depth_scale ...) is stored
flat next to the library's own keys, so consumers read ``meta["robot"]`` and
``meta["num_steps"]`` alike.  The library's keys are reserved: a caller passing
one of them is a bug that would silently corrupt the record, so it is refused.
The same schema drives the writer, the reader, recovery and validation.
"""

from __future__ import annotations

from typing import Any

from rlds.layout import EPISODE_ID_RE, FORMAT_NAME, FORMAT_VERSION

# Written at start (open.json) and kept in episode.json.
START_KEYS: dict[str, type | tuple[type, ...]] = {
    "format": str,
    "format_version": int,
    "episode_id": str,
    "start_utc": str,
    "start_wall": (float, int),
    "writer": dict,
}

# Added at commit (episode.json only).
COMMIT_KEYS: dict[str, type | tuple[type, ...]] = {
    "status": str,
    "truncated": bool,
    "terminal": bool,
    "num_steps": int,
    "start_t": (float, int, type(None)),
    "end_t": (float, int, type(None)),
    "duration_s": (float, int),
    "end_utc": str,
    "file_size": int,
    "steps_sha256": str,
}

# Optional library keys.
OPTIONAL_KEYS = ("recovery", "abort_reason", "end_utc_estimated")

RESERVED = frozenset(START_KEYS) | frozenset(COMMIT_KEYS) | frozenset(OPTIONAL_KEYS)

STATUS_COMPLETE = "complete"
STATUS_RECOVERED = "recovered"
STATUSES = (STATUS_COMPLETE, STATUS_RECOVERED)


def reserved_in(user: dict[str, Any]) -> list[str]:
    return sorted(k for k in user if k in RESERVED)


def _check(meta: dict[str, Any], keys: dict[str, Any], problems: list[str], where: str) -> None:
    for key, typ in keys.items():
        if key not in meta:
            problems.append(f"{where}: missing key {key!r}")
        elif not isinstance(meta[key], typ) or (typ is int and isinstance(meta[key], bool)):
            problems.append(f"{where}: key {key!r} has type {type(meta[key]).__name__}")


def check_start(meta: Any, where: str = "open.json") -> list[str]:
    """Problems with start metadata (empty list = fine)."""
    if not isinstance(meta, dict):
        return [f"{where}: not a JSON object"]
    problems: list[str] = []
    _check(meta, START_KEYS, problems, where)
    if meta.get("format") not in (None, FORMAT_NAME):
        problems.append(f"{where}: format {meta['format']!r} is not {FORMAT_NAME!r}")
    if isinstance(meta.get("format_version"), int) and meta["format_version"] > FORMAT_VERSION:
        problems.append(
            f"{where}: format_version {meta['format_version']} is newer than {FORMAT_VERSION}"
        )
    if isinstance(meta.get("episode_id"), str) and not EPISODE_ID_RE.match(meta["episode_id"]):
        problems.append(f"{where}: episode_id {meta['episode_id']!r} is malformed")
    return problems


def check_committed(meta: Any, where: str = "episode.json") -> list[str]:
    """Problems with committed metadata (empty list = fine)."""
    problems = check_start(meta, where)
    if not isinstance(meta, dict):
        return problems
    _check(meta, COMMIT_KEYS, problems, where)
    if "status" in meta and meta["status"] not in STATUSES:
        problems.append(f"{where}: status {meta['status']!r} is not one of {STATUSES}")
    if meta.get("status") == STATUS_RECOVERED and meta.get("truncated") is not True:
        problems.append(f"{where}: a recovered episode must have truncated=true")
    if isinstance(meta.get("num_steps"), int) and meta["num_steps"] < 1:
        problems.append(f"{where}: num_steps {meta['num_steps']} < 1")
    return problems

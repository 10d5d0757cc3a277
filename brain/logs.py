"""Logging set-up for the daemon: JSON lines for journald, readable text on a terminal.

Structured fields travel with a record through ``extra={"fields": {...}}``, or
shorter, ``log.info("tick overrun", extra=log_fields(ms=12.5, tick=401))``.  In
JSON they are merged into the top-level object; in text they follow the message
as ``key=value``.

JSON line keys: ``ts`` (ISO-8601 UTC, milliseconds, ``Z``), ``level``, ``logger``,
``msg``, ``exc`` (formatted traceback, only with an exception), ``stack`` (only
with ``stack_info``), then the fields.  A field whose name collides with one of
those keys is written as ``field_<name>`` so that it can never hide them.
Values that JSON cannot hold (objects, NaN/Inf, non-string keys) become strings.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import IO, Any, Literal

__all__ = [
    "JsonFormatter",
    "LogRateLimiter",
    "LoopErrorLog",
    "TextFormatter",
    "log_fields",
    "setup_logging",
]

_RESERVED = frozenset({"ts", "level", "logger", "msg", "exc", "stack"})
_MAX_DEPTH = 8


def log_fields(**kw: Any) -> dict[str, dict[str, Any]]:
    """``extra=`` argument carrying structured fields: ``{"fields": kw}``."""
    return {"fields": kw}


def _record_fields(record: logging.LogRecord) -> Mapping[str, Any]:
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, Mapping) else {}


def _jsonable(value: Any, depth: int = 0) -> Any:
    """``value`` made strictly JSON-serialisable (no NaN, no foreign objects)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if depth >= _MAX_DEPTH:
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v, depth + 1) for v in value]
    return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per line (see the module docstring for its keys)."""

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            obj["exc"] = record.exc_text
        if record.stack_info:
            obj["stack"] = self.formatStack(record.stack_info)
        for key, value in _record_fields(record).items():
            key = str(key)
            obj["field_" + key if key in _RESERVED else key] = _jsonable(value)
        return json.dumps(obj, ensure_ascii=False, default=str)


def _text_value(value: Any) -> str:
    text = str(value)
    if text == "" or any(c.isspace() or c in '="' for c in text):
        return json.dumps(text, ensure_ascii=False)
    return text


class TextFormatter(logging.Formatter):
    """``HH:MM:SS.mmm LEVEL logger: msg key=value ...``, local time, traceback below."""

    def format(self, record: logging.LogRecord) -> str:
        t = datetime.fromtimestamp(record.created)
        parts = [
            f"{t:%H:%M:%S}.{t.microsecond // 1000:03d} {record.levelname} {record.name}: "
            + record.getMessage()
        ]
        parts.extend(f"{k}={_text_value(v)}" for k, v in _record_fields(record).items())
        text = " ".join(parts)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            text += "\n" + record.exc_text
        if record.stack_info:
            text += "\n" + self.formatStack(record.stack_info)
        return text


class _BrainHandler(logging.StreamHandler[IO[str]]):
    """Our root handler; recognised (and replaced) by a later setup_logging()."""


def _is_tty(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def _level(level: str | int) -> int:
    if isinstance(level, int):
        return level
    value = logging.getLevelNamesMapping().get(str(level).strip().upper())
    if value is None:
        raise ValueError(f"unknown log level {level!r}")
    return value


def setup_logging(
    level: str | int = "INFO",
    fmt: Literal["auto", "json", "text"] = "auto",
    stream: IO[str] | None = None,
) -> None:
    """Configure the root logger with one handler of ours; safe to call again.

    ``fmt="auto"`` chooses JSON when ``$JOURNAL_STREAM`` is set (systemd connected
    stderr to journald) or when ``stream`` is not a terminal, else text.
    ``stream`` defaults to ``sys.stderr`` at the time of the call.  A handler
    installed by an earlier call is removed; handlers installed by others
    (pytest, an embedding application) are left alone.
    """
    if fmt not in ("auto", "json", "text"):
        raise ValueError(f"unknown log format {fmt!r}")
    numeric_level = _level(level)
    if stream is None:
        stream = sys.stderr
    if fmt == "auto":
        fmt = "json" if os.environ.get("JOURNAL_STREAM") or not _is_tty(stream) else "text"

    handler = _BrainHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())

    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _BrainHandler)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(numeric_level)
    logging.captureWarnings(True)


class LogRateLimiter:
    """At most ``burst`` records per key per ``interval_s``; the rest are counted, not written.

    A flood of identical failures (accept() out of descriptors, thousands of times a
    second) must not fill the disk or the journal; the first few show what happened
    and the next record that gets through says how many were left out.
    """

    def __init__(
        self,
        interval_s: float = 10.0,
        burst: int = 3,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval_s = interval_s
        self.burst = burst
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: dict[str, tuple[float, int, int]] = {}  # key -> (start, sent, dropped)

    def allow(self, key: str) -> tuple[bool, int]:
        """(write this one?, how many were suppressed since the last one written)."""
        now = self._clock()
        with self._lock:
            start, sent, dropped = self._windows.get(key, (now, 0, 0))
            if now - start >= self.interval_s:
                start, sent = now, 0
            if sent < self.burst:
                self._windows[key] = (start, sent + 1, 0)
                return True, dropped
            self._windows[key] = (start, sent, dropped + 1)
            if len(self._windows) > 1024:  # keys come from messages: bound the table
                self._windows.pop(next(iter(self._windows)))
            return False, 0


class LoopErrorLog:
    """The daemon's asyncio exception handler: asyncio's own report, rate-limited per message."""

    def __init__(self, limiter: LogRateLimiter | None = None) -> None:
        self.limiter = limiter or LogRateLimiter()
        self._log = logging.getLogger("asyncio")

    def handle(self, loop: Any, context: dict[str, Any]) -> None:
        message = str(context.get("message") or "unhandled exception in the event loop")
        exc = context.get("exception")
        key = f"{message}|{type(exc).__name__}|{getattr(exc, 'errno', '')}"
        ok, dropped = self.limiter.allow(key)
        if not ok:
            return
        if dropped:
            message += f" ({dropped} more like this suppressed)"
        self._log.error(
            message,
            exc_info=exc if isinstance(exc, BaseException) else None,
            extra=log_fields(suppressed=dropped) if dropped else None,
        )

"""A bounded, crash-safe, on-disk queue of events waiting for the broker.

Events (mode changes, e-stops, updates, errors) matter most exactly when the
link is down, so they are appended to a log on disk first and published from
there; a daemon restart or a power cut loses none that were appended.

Layout of ``queue_dir``:

``events.log``
    one record per line: ``<crc32c of the JSON, 8 hex> <JSON>\\n``, the JSON being
    ``{"seq": n, "event": {...}}``; appended with fsync.  A torn last line (power
    cut during an append) fails its checksum and is cut off on open.
``state.json``
    ``{"acked": n, "dropped": m}`` written atomically: the highest sequence
    number the broker acknowledged, and how many events were dropped for space.

Delivery is at least once: a crash between PUBACK and writing ``state.json``
sends the event again, which the receiver recognises by its ``seq``.  When the
log outgrows ``max_bytes`` it is rewritten (atomic rename) without the
delivered records and, if still too big, without the oldest undelivered ones,
which are counted in ``dropped``.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.durable import append, replace_file, write_json
from rlds.crc import crc32c

LOG_NAME = "events.log"
STATE_NAME = "state.json"


@dataclass(frozen=True, slots=True)
class QueuedEvent:
    seq: int
    event: dict[str, Any]


def _encode(seq: int, event: dict[str, Any]) -> bytes:
    body = json.dumps({"seq": seq, "event": event}, separators=(",", ":"), default=str).encode()
    return b"%08x " % crc32c(body) + body + b"\n"


def _decode(line: bytes) -> QueuedEvent | None:
    if len(line) < 10 or line[8:9] != b" " or not line.endswith(b"\n"):
        return None
    body = line[9:-1]
    try:
        if int(line[:8], 16) != crc32c(body):
            return None
        obj = json.loads(body)
        return QueuedEvent(int(obj["seq"]), dict(obj["event"]))
    except (ValueError, KeyError, TypeError):
        return None


class EventQueue:
    """Thread-safe; ``append`` may be called from any thread, delivery from one."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        if max_bytes < 1024:
            raise ValueError(f"queue max_bytes {max_bytes} is too small (at least 1024)")
        self.dir = Path(directory)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self.dir.mkdir(parents=True, exist_ok=True)
        self._log = self.dir / LOG_NAME
        self._state = self.dir / STATE_NAME
        self.acked, self.dropped = self._read_state()
        self._records: list[QueuedEvent] = []
        self._sizes: dict[int, int] = {}
        self._bytes = 0
        self.torn_bytes = 0  # cut off a damaged tail on open (reported, then forgotten)
        self._file_bytes = 0
        self._load()
        self._next = max([self.acked, *(r.seq for r in self._records)]) + 1

    # ------------------------------------------------------------------ persistence

    def _read_state(self) -> tuple[int, int]:
        try:
            obj = json.loads(self._state.read_text())
            return int(obj.get("acked", 0)), int(obj.get("dropped", 0))
        except FileNotFoundError:
            return 0, 0
        except (ValueError, TypeError, AttributeError):
            # A damaged state file: delivering again is better than losing events.
            return 0, 0

    def _write_state(self) -> None:
        write_json(self._state, {"acked": self.acked, "dropped": self.dropped})

    def _load(self) -> None:
        try:
            data = self._log.read_bytes()
        except FileNotFoundError:
            return
        good = 0
        pos = 0
        while pos < len(data):
            end = data.find(b"\n", pos)
            if end < 0:
                break
            rec = _decode(data[pos : end + 1])
            if rec is None:
                break  # everything after a bad record is suspect: a torn append
            if rec.seq > self.acked:
                self._records.append(rec)
                self._sizes[rec.seq] = end + 1 - pos
                self._bytes += end + 1 - pos
            pos = end + 1
            good = pos
        if good < len(data):
            self.torn_bytes = len(data) - good
            with open(self._log, "r+b") as f:
                f.truncate(good)
                f.flush()
                os.fsync(f.fileno())
        self._file_bytes = good

    # ------------------------------------------------------------------ API

    def append(self, event: dict[str, Any]) -> int:
        """Store an event durably; returns its sequence number."""
        with self._lock:
            seq = self._next
            self._next += 1
            event = {"t": round(time.time(), 3), **event}
            line = _encode(seq, event)
            if len(line) > self.max_bytes // 2:
                raise ValueError(f"event of {len(line)} bytes is too large for the queue")
            if self._file_bytes + len(line) > self.max_bytes:
                self._compact(room=len(line))
            append(self._log, line)
            self._file_bytes += len(line)
            self._records.append(QueuedEvent(seq, event))
            self._sizes[seq] = len(line)
            self._bytes += len(line)
            return seq

    def pending(self) -> list[QueuedEvent]:
        """Undelivered events, oldest first."""
        with self._lock:
            return list(self._records)

    def ack(self, seq: int) -> None:
        """The broker has this event (and every older one): forget them."""
        with self._lock:
            if seq <= self.acked:
                return
            self.acked = seq
            while self._records and self._records[0].seq <= seq:
                rec = self._records.pop(0)
                self._bytes -= self._sizes.pop(rec.seq)
            self._write_state()
            if not self._records and self._file_bytes > 0:
                # Everything is delivered: start an empty log (cheap, keeps it small).
                self._rewrite([])

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "pending": len(self._records),
                "pending_bytes": self._bytes,
                "dropped": self.dropped,
                "acked": self.acked,
            }

    # ------------------------------------------------------------------ internals

    def _compact(self, room: int) -> None:
        """Rewrite the log with undelivered records only, dropping the oldest for room."""
        keep = list(self._records)
        size = sum(self._sizes[r.seq] for r in keep)
        dropped = 0
        while keep and size + room > self.max_bytes:
            size -= self._sizes[keep[0].seq]
            keep.pop(0)
            dropped += 1
        if dropped:
            gone = self._records[:dropped]
            self.dropped += dropped
            self.acked = max(self.acked, gone[-1].seq)  # they will never be sent
            for r in gone:
                self._bytes -= self._sizes.pop(r.seq)
            self._records = keep
            self._write_state()
        self._rewrite(keep)

    def _rewrite(self, records: list[QueuedEvent]) -> None:
        replace_file(self._log, b"".join(_encode(r.seq, r.event) for r in records))
        self._file_bytes = self._log.stat().st_size

"""TFRecord framing: writing records and scanning a file for valid ones.

Each record on disk is::

    uint64 length (little-endian)
    uint32 masked CRC32C of those 8 length bytes
    length bytes of data
    uint32 masked CRC32C of the data

This framing is what makes the append-only step file crash-safe: after a power
cut the file ends in a partial or garbage record, and the CRCs tell exactly where
the last complete record ends.  It is also what TensorFlow's ``TFRecordDataset``
reads, so the files can be consumed without a conversion step.

``scan`` never raises for bad data: it yields good records and finally reports
the first problem (as a ``FrameError``) so that the reader can raise, validation
can report, and recovery can truncate -- all from one implementation.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from rlds.crc import masked_crc32c

HEADER_SIZE = 12  # u64 length + u32 length CRC
FOOTER_SIZE = 4  # u32 data CRC
OVERHEAD = HEADER_SIZE + FOOTER_SIZE

# A step of 640x480 RGB + depth is well under 2 MB; anything claiming more than
# this is a corrupt length that happened to pass its CRC (or a hostile file) and
# must not make us allocate gigabytes.
MAX_RECORD_BYTES = 256 * 1024 * 1024

_LEN = struct.Struct("<Q")
_CRC = struct.Struct("<I")


def encode_record(data: bytes | bytearray | memoryview) -> bytes:
    """One framed record, ready for a single ``write``."""
    length = _LEN.pack(len(data))
    return b"".join(
        (length, _CRC.pack(masked_crc32c(length)), data, _CRC.pack(masked_crc32c(data)))
    )


@dataclass(frozen=True, slots=True)
class Record:
    """A record whose framing and CRCs are valid."""

    index: int
    offset: int  # byte offset of the record's length field
    data: bytes

    @property
    def end(self) -> int:
        return self.offset + OVERHEAD + len(self.data)


@dataclass(frozen=True, slots=True)
class FrameError:
    """Why scanning stopped before the end of the file."""

    index: int  # index the bad record would have had
    offset: int  # byte offset where it starts
    kind: str  # "truncated record" | "bad length CRC" | "bad data CRC" | "bad length"
    detail: str

    def describe(self, path: object) -> str:
        return (
            f"{path}: record {self.index} at byte offset {self.offset}: {self.kind} ({self.detail})"
        )


def scan(f: BinaryIO, *, start_offset: int = 0) -> Iterator[Record | FrameError]:
    """Yield every valid record from the current position, then at most one ``FrameError``.

    Stops at a clean end of file (no error) or at the first damaged record.
    """
    index = 0
    offset = start_offset
    while True:
        head = f.read(HEADER_SIZE)
        if not head:
            return
        if len(head) < HEADER_SIZE:
            yield FrameError(
                index, offset, "truncated record", f"{len(head)} of {HEADER_SIZE} header bytes"
            )
            return
        (length,) = _LEN.unpack_from(head, 0)
        (len_crc,) = _CRC.unpack_from(head, 8)
        if masked_crc32c(head[:8]) != len_crc:
            yield FrameError(index, offset, "bad length CRC", f"length field reads {length}")
            return
        if length > MAX_RECORD_BYTES:
            yield FrameError(
                index, offset, "bad length", f"{length} bytes exceeds {MAX_RECORD_BYTES}"
            )
            return
        body = f.read(length + FOOTER_SIZE)
        if len(body) < length + FOOTER_SIZE:
            yield FrameError(
                index,
                offset,
                "truncated record",
                f"needs {length + FOOTER_SIZE} bytes after the header, file has {len(body)}",
            )
            return
        data = body[:length]
        (data_crc,) = _CRC.unpack_from(body, length)
        if masked_crc32c(data) != data_crc:
            yield FrameError(index, offset, "bad data CRC", f"{length} data bytes")
            return
        yield Record(index, offset, data)
        index += 1
        offset += OVERHEAD + length

"""The files: TFRecord shards, JSON metadata, and the rename of the finished dataset."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import google_crc32c

from common.durable import move, replace_dir
from rlds.crc import mask, masked_crc32c
from rlds.errors import EpisodeError
from rlds.tfrecord import OVERHEAD

_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")


class ShardWriter:
    """Shards of one split: a new file whenever the next record would overflow."""

    def __init__(self, tmp: Path, prefix: str, max_bytes: int) -> None:
        self.tmp, self.prefix, self.max_bytes = tmp, prefix, max_bytes
        self.lengths: list[int] = []
        self.num_bytes = 0  # serialized examples, no framing: what tfds records
        self._f: Any = None
        self._size = 0

    def write(self, chunks: list[bytes | memoryview], size: int) -> None:
        """Append one record, TFRecord-framed, whose data is ``chunks`` (``size`` bytes).

        The CRC is computed chunk by chunk and the chunks written as they are, so
        an episode's tens of megabytes of JPEG are never joined into one buffer.
        """
        framed = size + OVERHEAD
        if self._f is None or (self._size and self._size + framed > self.max_bytes):
            self._next()
        crc = 0
        for c in chunks:
            crc = google_crc32c.extend(crc, c)
        length = _U64.pack(size)
        self._f.write(length + _U32.pack(masked_crc32c(length)))
        self._f.writelines(chunks)
        self._f.write(_U32.pack(mask(crc)))
        self._size += framed
        self.lengths[-1] += 1
        self.num_bytes += size

    def _next(self) -> None:
        self._close()
        # held open across write() calls: closed by finish(), or close() on errors
        self._f = open(self.tmp / f"{self.prefix}-{len(self.lengths):05d}", "wb")  # noqa: SIM115
        self._size = 0
        self.lengths.append(0)

    def _close(self) -> None:
        if self._f is not None:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            self._f = None

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def finish(self) -> list[str]:
        """Rename the shards to their final ``-XXXXX-of-YYYYY`` names."""
        self._close()
        total = len(self.lengths)
        names = []
        for i in range(total):
            final = f"{self.prefix}-{i:05d}-of-{total:05d}"
            move(self.tmp / f"{self.prefix}-{i:05d}", self.tmp / final)
            names.append(final)
        return names


def write_json(path: Path, obj: Any, indent: int) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=indent, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def place(tmp: Path, out_dir: Path) -> None:
    """Move the finished ``tmp`` to ``out_dir``, replacing an old dataset there."""
    if out_dir.exists():
        if not out_dir.is_dir():
            raise EpisodeError(f"{out_dir} exists and is not a directory")
        contents = list(out_dir.iterdir())
        if contents and not (out_dir / "dataset_info.json").is_file():
            raise EpisodeError(
                f"{out_dir} is not empty and holds no TFDS dataset; refusing to replace it"
            )
    replace_dir(tmp, out_dir)

"""One step as one self-describing binary record (the data inside a TFRecord frame).

Layout::

    uint32 little-endian header length N
    N bytes of UTF-8 JSON header
    blobs, concatenated

The header holds the scalar fields (index, t, RLDS flags, action, reward,
discount, timestamps, extra) and a blob table: for every array observation its
name, offset and length inside the blob section, encoding ("jpeg", "png16" or
"raw"), dtype and shape.  A record can therefore be decoded with nothing but a
JSON parser and an image codec -- no schema file, no protobuf -- and images stay
in their compressed form until someone asks for pixels.

Floats go through ``rlds.jsonvalues`` so they come back bit-exact.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from rlds import images, jsonvalues
from rlds.types import StepData

RECORD_VERSION = 1
_U32 = struct.Struct("<I")

_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "v": int,
    "index": int,
    "t": (float, int),
    "is_first": bool,
    "is_last": bool,
    "is_terminal": bool,
    "action": list,
    "reward": (float, int),
    "discount": (float, int),
    "timestamps": dict,
    "extra": dict,
    "blobs": list,
}
_BLOB_KEYS = ("name", "offset", "length", "encoding")


class RecordError(ValueError):
    """A record whose CRCs are fine but whose content is not a valid step."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind} ({detail})")
        self.kind = kind
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Blob:
    """An encoded observation, ready to go into a record."""

    name: str
    data: bytes
    encoding: str
    dtype: str
    shape: list[int] | None


def build(header: dict[str, Any], blobs: list[Blob]) -> bytes:
    """Serialize a step header (without the blob table) and its blobs into record bytes."""
    table = []
    offset = 0
    for b in blobs:
        table.append(
            {
                "name": b.name,
                "offset": offset,
                "length": len(b.data),
                "encoding": b.encoding,
                "dtype": b.dtype,
                "shape": b.shape,
            }
        )
        offset += len(b.data)
    head = jsonvalues.dumps({"v": RECORD_VERSION, **header, "blobs": table}).encode("utf-8")
    return b"".join([_U32.pack(len(head)), head, *(b.data for b in blobs)])


def parse_header(data: bytes) -> tuple[dict[str, Any], memoryview]:
    """The header dict and a view of the blob section; ``RecordError`` if malformed."""
    if len(data) < 4:
        raise RecordError("bad header", f"record has {len(data)} bytes, needs at least 4")
    (n,) = _U32.unpack_from(data, 0)
    if n > len(data) - 4:
        raise RecordError("bad header", f"header length {n} exceeds record size {len(data)}")
    try:
        header = jsonvalues.loads(bytes(data[4 : 4 + n]).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise RecordError("bad header JSON", str(e)) from None
    if not isinstance(header, dict):
        raise RecordError("bad header JSON", "header is not a JSON object")
    for key, typ in _REQUIRED.items():
        if key not in header:
            raise RecordError("bad header", f"missing field {key!r}")
        val = header[key]
        if not isinstance(val, typ) or (typ is int and isinstance(val, bool)):
            raise RecordError("bad header", f"field {key!r} has type {type(val).__name__}")
    if header["v"] != RECORD_VERSION:
        raise RecordError("bad header", f"record version {header['v']} is not {RECORD_VERSION}")
    section = memoryview(data)[4 + n :]
    for i, entry in enumerate(header["blobs"]):
        if not isinstance(entry, dict) or any(k not in entry for k in _BLOB_KEYS):
            raise RecordError("bad header", f"blob table entry {i} is malformed")
        off, length = entry["offset"], entry["length"]
        if not (isinstance(off, int) and isinstance(length, int)) or off < 0 or length < 0:
            raise RecordError("bad header", f"blob {entry['name']!r} has a bad offset/length")
        if off + length > len(section):
            raise RecordError(
                "bad header",
                f"blob {entry['name']!r} ends at {off + length}, blob section has {len(section)}",
            )
    return header, section


def decode_blob(entry: dict[str, Any], raw: bytes) -> np.ndarray:
    """Decode one blob to an array; ``RecordError`` if it does not decode to what the table says."""
    enc = entry["encoding"]
    shape: Any = entry.get("shape")  # checked by decode_raw's reshape
    name = entry["name"]
    if enc == images.JPEG:
        arr = images.decode_jpeg(raw)
        if arr is None:
            raise RecordError("bad image", f"{name!r}: JPEG does not decode")
    elif enc == images.PNG16:
        arr = images.decode_png16(raw)
        if arr is None:
            raise RecordError("bad image", f"{name!r}: not a decodable 16-bit PNG")
    elif enc == images.RAW:
        try:
            arr = images.decode_raw(raw, entry["dtype"], shape)
        except (KeyError, TypeError, ValueError) as e:
            raise RecordError("bad blob", f"{name!r}: {e}") from None
    else:
        raise RecordError("bad blob", f"{name!r}: unknown encoding {enc!r}")
    if shape is not None and list(arr.shape) != list(shape):
        raise RecordError("bad blob", f"{name!r}: decoded shape {arr.shape} != header {shape}")
    return arr


def decode(data: bytes, *, decode_images: bool = True) -> StepData:
    """Record bytes to a ``StepData``; ``RecordError`` if anything is malformed."""
    header, section = parse_header(data)
    observation: dict[str, np.ndarray] = {}
    encoded: dict[str, bytes] = {}
    for entry in header["blobs"]:
        raw = bytes(section[entry["offset"] : entry["offset"] + entry["length"]])
        if entry["encoding"] in (images.JPEG, images.PNG16):
            encoded[entry["name"]] = raw
            if not decode_images:
                continue
        observation[entry["name"]] = decode_blob(entry, raw)
    try:
        action = np.array([jsonvalues.decode_float(v) for v in header["action"]], np.float64)
        timestamps = {str(k): float(v) for k, v in header["timestamps"].items()}
    except (TypeError, ValueError) as e:
        raise RecordError("bad header", f"action/timestamps: {e}") from None
    return StepData(
        index=header["index"],
        t=float(header["t"]),
        is_first=header["is_first"],
        is_last=header["is_last"],
        is_terminal=header["is_terminal"],
        action=action,
        reward=float(header["reward"]),
        discount=float(header["discount"]),
        observation=observation,
        timestamps=timestamps,
        extra=header["extra"],
        encoded=encoded,
    )

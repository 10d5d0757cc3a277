"""``tf.train.Example`` protobufs encoded by hand, so exports need no TensorFlow.

The messages (from TensorFlow's ``example.proto`` / ``feature.proto``) are tiny::

    Example   { Features features = 1; }
    Features  { map<string, Feature> feature = 1; }   // entry: key = 1, value = 2
    Feature   { oneof kind { BytesList bytes_list = 1; FloatList float_list = 2;
                             Int64List int64_list = 3; } }
    BytesList { repeated bytes value = 1; }
    FloatList { repeated float value = 1 [packed = true]; }
    Int64List { repeated int64 value = 1 [packed = true]; }

Every field used is length-delimited (wire type 2) except the packed scalars
inside.  A message is built as a list of byte chunks plus its total size, so
nesting only prepends a tag and a length: the (large) JPEG payloads are never
copied until the one final ``b"".join``.  Map entries are emitted sorted by
key, which makes the encoding deterministic (same features -> same bytes).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

# Tags of the length-delimited fields used: (field number << 3) | 2.
_TAG_1 = b"\x0a"  # Example.features, Features.feature, *List.value, entry key, Feature.bytes_list
_TAG_2 = b"\x12"  # map entry value, Feature.float_list
_TAG_3 = b"\x1a"  # Feature.int64_list

_SMALL_VARINTS = [bytes([i]) for i in range(128)]


def varint(n: int) -> bytes:
    """Base-128 varint of a non-negative integer (negatives: 64-bit two's complement)."""
    if 0 <= n < 128:
        return _SMALL_VARINTS[n]
    if n < 0:
        n &= 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


@dataclass(slots=True)
class Feature:
    """One encoded ``Feature`` message: its chunks and their total size."""

    chunks: list[bytes | memoryview]
    size: int


def _wrap(tag: bytes, chunks: list[bytes | memoryview], size: int) -> Feature:
    head = tag + varint(size)
    return Feature([head, *chunks], len(head) + size)


def bytes_feature(values: Iterable[bytes | memoryview]) -> Feature:
    chunks: list[bytes | memoryview] = []
    size = 0
    for v in values:
        head = _TAG_1 + varint(len(v))
        chunks.append(head)
        chunks.append(v)
        size += len(head) + len(v)
    return _wrap(_TAG_1, chunks, size)


def float_feature(values: np.ndarray | Sequence[float]) -> Feature:
    """A ``FloatList`` (float32: TensorFlow has no double list)."""
    payload = np.ascontiguousarray(values, dtype="<f4").tobytes()
    if not payload:
        return Feature([_TAG_2, varint(0)], 2)
    head = _TAG_1 + varint(len(payload))
    return _wrap(_TAG_2, [head, payload], len(head) + len(payload))


def int64_feature(values: Iterable[int]) -> Feature:
    payload = b"".join(varint(int(v)) for v in values)
    if not payload:
        return Feature([_TAG_3, varint(0)], 2)
    head = _TAG_1 + varint(len(payload))
    return _wrap(_TAG_3, [head, payload], len(head) + len(payload))


def example_chunks(features: Mapping[str, Feature]) -> tuple[list[bytes | memoryview], int]:
    """The chunks of a serialized ``Example`` holding ``features``, and its size."""
    inner: list[bytes | memoryview] = []
    inner_size = 0
    for key in sorted(features):
        feat = features[key]
        k = key.encode("utf-8")
        entry_head = _TAG_1 + varint(len(k)) + k + _TAG_2 + varint(feat.size)
        entry_size = len(entry_head) + feat.size
        head = _TAG_1 + varint(entry_size)
        inner.append(head + entry_head)
        inner.extend(feat.chunks)
        inner_size += len(head) + entry_size
    head = _TAG_1 + varint(inner_size)
    return [head, *inner], len(head) + inner_size


def serialize_example(features: Mapping[str, Feature]) -> bytes:
    """A serialized ``tf.train.Example``."""
    chunks, size = example_chunks(features)
    data = b"".join(chunks)
    assert len(data) == size
    return data

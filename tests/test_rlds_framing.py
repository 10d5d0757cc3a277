"""CRC32C, the TFRecord mask and framing, checked against known values and an independent reader."""

from __future__ import annotations

import io
import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlds import crc, record, tfrecord


def _crc32c_reference(data: bytes) -> int:
    """Bitwise CRC32C (reflected polynomial 0x82F63B78): slow, obviously correct."""
    c = 0xFFFFFFFF
    for b in data:
        c ^= b
        for _ in range(8):
            c = (c >> 1) ^ (0x82F63B78 if c & 1 else 0)
    return c ^ 0xFFFFFFFF


def test_crc32c_known_vectors():
    assert crc.crc32c(b"123456789") == 0xE3069283
    assert crc.crc32c(b"") == 0
    assert crc.crc32c(b"\x00" * 32) == 0x8A9136AA  # RFC 3720 B.4
    assert crc.crc32c(b"\xff" * 32) == 0x62A8AB43  # RFC 3720 B.4
    assert crc.IMPLEMENTATION == "c", "google-crc32c fell back to pure Python (too slow)"


@given(st.binary(max_size=300))
@settings(max_examples=200, deadline=None)
def test_crc32c_matches_bitwise_reference(data):
    assert crc.crc32c(data) == _crc32c_reference(data)


def test_mask_formula():
    for c in (0, 1, 0xE3069283, 0xFFFFFFFF, 0x12345678):
        expected = ((((c >> 15) | (c << 17)) & 0xFFFFFFFF) + 0xA282EAD8) % 2**32
        assert crc.mask(c) == expected
    # TensorFlow: masked crc of the empty record's length field (8 zero bytes)
    assert crc.masked_crc32c(b"\x00" * 8) == crc.mask(_crc32c_reference(b"\x00" * 8))


def _independent_read(blob: bytes) -> list[bytes]:
    """A minimal TFRecord reader written from the format description only."""

    def masked(b: bytes) -> int:
        c = _crc32c_reference(b)
        return ((((c >> 15) | (c << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF

    out, pos = [], 0
    while pos < len(blob):
        (n,) = struct.unpack_from("<Q", blob, pos)
        (lc,) = struct.unpack_from("<I", blob, pos + 8)
        assert lc == masked(blob[pos : pos + 8])
        data = blob[pos + 12 : pos + 12 + n]
        (dc,) = struct.unpack_from("<I", blob, pos + 12 + n)
        assert dc == masked(data)
        out.append(data)
        pos += 16 + n
    assert pos == len(blob)
    return out


def test_written_records_parse_with_independent_reader(tmp_path):
    from tests.rlds_helpers import write_episode

    _, info = write_episode(tmp_path, 6, seed=3)
    blob = (info.path / "steps.tfrecord").read_bytes()
    records = _independent_read(blob)
    assert len(records) == 6
    for i, data in enumerate(records):
        (hlen,) = struct.unpack_from("<I", data, 0)
        header = json.loads(data[4 : 4 + hlen])
        assert header["index"] == i
        assert header["is_first"] == (i == 0)
        assert header["is_last"] == (i == 5)
        names = {b["name"]: b for b in header["blobs"]}
        assert names["image"]["encoding"] == "jpeg"
        assert names["depth"]["encoding"] == "png16"
        assert names["state"]["encoding"] == "raw" and names["state"]["dtype"] == "<f4"
        img = data[4 + hlen + names["image"]["offset"] :][: names["image"]["length"]]
        assert img[:3] == b"\xff\xd8\xff"


@given(st.lists(st.binary(max_size=200), max_size=8))
@settings(max_examples=100, deadline=None)
def test_encode_scan_roundtrip(payloads):
    blob = b"".join(tfrecord.encode_record(p) for p in payloads)
    items = list(tfrecord.scan(io.BytesIO(blob)))
    assert [r.data for r in items] == payloads
    assert _independent_read(blob) == payloads


def _scan_error(blob: bytes) -> tfrecord.FrameError:
    items = list(tfrecord.scan(io.BytesIO(blob)))
    assert isinstance(items[-1], tfrecord.FrameError)
    return items[-1]


def test_scan_reports_kind_index_and_offset():
    recs = [tfrecord.encode_record(bytes([i]) * (10 + i)) for i in range(3)]
    blob = b"".join(recs)
    off2 = len(recs[0]) + len(recs[1])

    flipped = bytearray(blob)
    flipped[off2 + 14] ^= 0x04  # a data byte of record 2
    e = _scan_error(bytes(flipped))
    assert (e.kind, e.index, e.offset) == ("bad data CRC", 2, off2)

    flipped = bytearray(blob)
    flipped[len(recs[0]) + 1] ^= 0x80  # the length field of record 1
    e = _scan_error(bytes(flipped))
    assert (e.kind, e.index, e.offset) == ("bad length CRC", 1, len(recs[0]))

    e = _scan_error(blob[:-3])
    assert (e.kind, e.index, e.offset) == ("truncated record", 2, off2)
    e = _scan_error(blob + b"\x00" * 5)
    assert (e.kind, e.index, e.offset) == ("truncated record", 3, len(blob))
    e = _scan_error(blob + b"\x00" * 40)
    assert (e.kind, e.index, e.offset) == ("bad length CRC", 3, len(blob))


def test_record_header_errors_are_recorderrors():
    good = record.build(
        {
            "index": 0,
            "t": 1.0,
            "is_first": True,
            "is_last": True,
            "is_terminal": False,
            "action": [1.0],
            "reward": 0.0,
            "discount": 1.0,
            "timestamps": {},
            "extra": {},
        },
        [],
    )
    assert record.decode(good).action.tolist() == [1.0]
    for bad in (b"", b"\x05\x00\x00\x00{}", b"\x02\x00\x00\x00{x", b"\x02\x00\x00\x00[]"):
        with pytest.raises(record.RecordError):
            record.decode(bad)

"""Image headers: shapes without decoding, and a first check that bytes are sane."""

from __future__ import annotations

import struct

_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def jpeg_shape(data: bytes) -> tuple[int, int, int]:
    """(height, width, components) from a JPEG's SOF segment; ValueError if malformed."""
    if not data.startswith(b"\xff\xd8"):
        raise ValueError("not a JPEG (no SOI marker)")
    if not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        raise ValueError("JPEG is truncated (no EOI marker)")
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            raise ValueError(f"JPEG marker expected at byte {i}")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            i += 2
            continue
        (seg_len,) = struct.unpack_from(">H", data, i + 2)
        if marker in _JPEG_SOF:
            if i + 2 + seg_len > n or seg_len < 8:
                raise ValueError("JPEG SOF segment is truncated")
            h, w = struct.unpack_from(">HH", data, i + 5)
            comps = data[i + 9]
            if h == 0 or w == 0 or comps not in (1, 3):
                raise ValueError(f"JPEG frame header is invalid ({h}x{w}x{comps})")
            return h, w, comps
        if marker == 0xDA:  # start of scan before any frame header
            break
        i += 2 + seg_len
    raise ValueError("JPEG has no frame header")


def png16_shape(data: bytes) -> tuple[int, int]:
    """(height, width) of a 16-bit greyscale PNG; ValueError for anything else."""
    if len(data) < 33 or not data.startswith(b"\x89PNG\r\n\x1a\n") or data[12:16] != b"IHDR":
        raise ValueError("not a PNG (bad signature or IHDR)")
    w, h, bit_depth, color_type = struct.unpack_from(">IIBB", data, 16)
    if bit_depth != 16 or color_type != 0:
        raise ValueError(f"PNG is not 16-bit greyscale (bit depth {bit_depth}, type {color_type})")
    if not data.endswith(b"IEND\xaeB`\x82"):
        raise ValueError("PNG is truncated (no IEND chunk)")
    if w == 0 or h == 0:
        raise ValueError("PNG has a zero dimension")
    return h, w

"""CRC32C (Castagnoli) and the TFRecord CRC mask.

TFRecord framing protects the length and the payload of every record with a
*masked* CRC32C.  The mask exists because computing the CRC of data that itself
contains CRCs is weak; TensorFlow's definition is
``((crc >> 15) | (crc << 17)) + 0xa282ead8`` modulo 2**32.

The CRC itself comes from ``google-crc32c``: a C implementation (SSE4.2 on x86,
the ARMv8 CRC instructions on the Pi 5) that runs at gigabytes per second.  A
pure-Python table CRC manages about 1 MB/s, far too slow for 640x480 JPEGs at
50 Hz, so ``IMPLEMENTATION`` is exported for benchmarks and health checks to
report which one is in use (the package silently falls back to Python if its
extension cannot load).
"""

from __future__ import annotations

import google_crc32c

IMPLEMENTATION: str = google_crc32c.implementation

_MASK_DELTA = 0xA282EAD8


def crc32c(data: bytes | bytearray | memoryview) -> int:
    """Plain CRC32C of ``data`` (CRC32C(b"123456789") == 0xE3069283)."""
    value: int = google_crc32c.value(bytes(data) if isinstance(data, memoryview) else data)
    return value


def mask(crc: int) -> int:
    """TFRecord's CRC mask."""
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


def masked_crc32c(data: bytes | bytearray | memoryview) -> int:
    """The masked CRC32C stored in TFRecord files."""
    return mask(crc32c(data))

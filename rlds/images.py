"""Image codecs for observations: JPEG for RGB, 16-bit PNG for depth.

RGB camera frames are stored as JPEG because raw 640x480x3 at 50 Hz would be
46 MB/s, far beyond an SD card; quality 90 keeps the error a few grey levels.
Depth must stay exact (a JPEG'd depth map invents geometry), so it is stored as
lossless 16-bit PNG; PNG compression level 1 keeps it cheap on a Pi's CPU.
OpenCV is used for both because the project already depends on it and its
codecs (libjpeg-turbo, libpng) are the fastest commonly available.

OpenCV works in BGR order; these functions take and return RGB.
"""

from __future__ import annotations

import cv2
import numpy as np

JPEG = "jpeg"
PNG16 = "png16"
RAW = "raw"

_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def choose_encoding(arr: np.ndarray) -> str:
    """JPEG for HxWx3 uint8, PNG16 for HxW uint16, raw (bit-exact) for anything else."""
    if arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3 and arr.size:
        return JPEG
    if arr.dtype == np.uint16 and arr.ndim == 2 and arr.size:
        return PNG16
    return RAW


def sniff(data: bytes) -> str | None:
    """The encoding of pre-encoded bytes, from their magic number."""
    if data.startswith(_JPEG_MAGIC):
        return JPEG
    if data.startswith(_PNG_MAGIC):
        return PNG16
    return None


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    bgr = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"JPEG encoding failed for an array of shape {rgb.shape}")
    return buf.tobytes()


def decode_jpeg(data: bytes) -> np.ndarray | None:
    """HxWx3 uint8 RGB, or None if the bytes are not a decodable JPEG."""
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None or bgr.ndim != 3:
        return None
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def encode_png16(depth: np.ndarray, compression: int = 1) -> bytes:
    ok, buf = cv2.imencode(
        ".png", np.ascontiguousarray(depth), [cv2.IMWRITE_PNG_COMPRESSION, int(compression)]
    )
    if not ok:
        raise ValueError(f"PNG encoding failed for an array of shape {depth.shape}")
    return buf.tobytes()


def decode_png16(data: bytes) -> np.ndarray | None:
    """HxW uint16, or None if the bytes are not a 16-bit single-channel PNG."""
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.dtype != np.uint16 or arr.ndim != 2:
        return None
    return arr


def encode_raw(arr: np.ndarray) -> tuple[bytes, str]:
    """Little-endian bytes and the numpy dtype string that reads them back."""
    if arr.dtype.hasobject or arr.dtype.fields is not None:
        raise ValueError(f"cannot store arrays of dtype {arr.dtype}")
    le = arr.dtype.newbyteorder("<")  # no-op for byte-sized types ("|u1")
    return np.ascontiguousarray(arr, dtype=le).tobytes(), le.str


def decode_raw(data: bytes, dtype: str, shape: list[int]) -> np.ndarray:
    return np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape).copy()

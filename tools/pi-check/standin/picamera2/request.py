"""Completed requests: arrays and metadata valid until release() (as in picamera2)."""

from __future__ import annotations

from typing import Any

import numpy as np

# The numpy-ABI boundary: a Debian module built against numpy 1.x, imported on the camera
# path like picamera2's `import simplejpeg`.
import pywt  # noqa: F401


class CompletedRequest:
    def __init__(self, bgr: np.ndarray, metadata: dict[str, Any]) -> None:
        self._bgr = bgr
        self._metadata = metadata
        self._released = False

    def make_array(self, name: str) -> np.ndarray:
        if self._released:
            raise RuntimeError("request already released")
        if name != "main":
            raise KeyError(f"no stream {name!r} configured")
        return self._bgr

    def get_metadata(self) -> dict[str, Any]:
        if self._released:
            raise RuntimeError("request already released")
        return dict(self._metadata)

    def release(self) -> None:
        self._released = True

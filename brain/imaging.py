"""The one image resize shared by the robot and by training.

The daemon's policy runner and the training/evaluation code must feed the
network identical pixels, so both call this function (cv2 INTER_AREA, only
when the size differs) instead of each keeping its own copy.
"""

from __future__ import annotations

import cv2
import numpy as np


def resize_rgb(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """HxWx3 uint8 RGB (any size) -> contiguous uint8 [h, w, 3]; ValueError for anything else."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        got = image.dtype if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"image must be a uint8 numpy array, got {got}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be HxWx3 (RGB), got shape {image.shape}")
    h, w = hw
    if image.shape[0] != h or image.shape[1] != w:
        image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(image)

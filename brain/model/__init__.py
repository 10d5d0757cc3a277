"""The policy network (torch).  The robot daemon never imports this package: it runs the
exported ONNX step graph (``docs/policy-contract.md``).  Architecture: ``docs/model.md``.

API::

    policy = build_policy("pi5", memory=True, cms_levels=3, depth=False)
    state, memory = policy.initial_state(batch_size)
    action, state, memory = policy.step(image_u8, state, memory)            # [B, H, W, 3]
    actions, state, memory = policy.forward_sequence(images_u8, state, memory)  # [B, T, H, W, 3]
    policy.set_memorize(lr=1.0, threshold=0.0)  # evaluation-time memory knobs
    save_policy(policy, "p.pt"); policy = load_policy("p.pt")
    export_onnx(policy, "policy.onnx", version="v1")
"""

from __future__ import annotations

import cv2
import numpy as np

from brain.imaging import resize_rgb

from .config import IMAGE_HW, PRESETS, ModelConfig, make_config
from .export import export_onnx
from .memory import delta_rule_update, memory_read
from .policy import Policy, build_policy, load_policy, save_policy


def preprocess_frame(rgb_hwc_uint8: np.ndarray, hw: tuple[int, int] = IMAGE_HW) -> np.ndarray:
    """HxWx3 uint8 RGB (any size) -> uint8 [H, W, 3] at the model's size.

    The same resize as the daemon's runner (``brain.policy.contract.StepGraph.prepare_image``:
    cv2.INTER_AREA, only when the size differs), so training sees exactly what the robot feeds.
    """
    return resize_rgb(np.asarray(rgb_hwc_uint8), hw)


def preprocess_depth(depth_hw_uint16: np.ndarray, hw: tuple[int, int] = IMAGE_HW) -> np.ndarray:
    """HxW uint16 depth (mm) -> uint16 [H, W] at the model's size (nearest: no mixed edges)."""
    d = np.asarray(depth_hw_uint16)
    if d.ndim != 2:
        raise ValueError(f"expected HxW depth, got shape {d.shape}")
    h, w = hw
    if d.shape != (h, w):
        d = cv2.resize(d, (w, h), interpolation=cv2.INTER_NEAREST)
    return np.ascontiguousarray(d)


__all__ = [
    "IMAGE_HW",
    "PRESETS",
    "ModelConfig",
    "Policy",
    "build_policy",
    "delta_rule_update",
    "export_onnx",
    "load_policy",
    "make_config",
    "memory_read",
    "preprocess_depth",
    "preprocess_frame",
    "save_policy",
]

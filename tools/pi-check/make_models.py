"""Host side of `make pi-check`: a tiny policy made with torch, exported the way the project
exports (ONNX FP32, ONNX INT8, LiteRT FP32), plus frames and torch's own actions for them.

The arm64 root has no torch: it steps these files through `brain.policy.backends` and
compares with the reference here (step_models.py).

    python tools/pi-check/make_models.py OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from brain.model import build_policy, export_onnx
from brain.model.quantize import quantize_int8
from cloud_jobs.export.litert import export_litert

# The policy family the robot runs ("pi5"), shrunk so that emulated steps are quick.
TINY = {
    "image_hw": (24, 32),
    "enc_channels": (8, 8),
    "enc_kernels": (3, 3),
    "enc_strides": (2, 2),
    "enc_groups": 4,
    "keypoints": 4,
    "feature_dim": 16,
    "mem_key_dim": 4,
    "mem_value_dim": 8,
    "cms_levels": 2,
    "cms_periods": (1, 2),
    "cms_hidden_mult": 1.0,
    "head_hidden": 16,
}
NAMES = ["steering", "throttle"]
STEPS = 8


def main(out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    policy = build_policy("pi5", **TINY).eval()
    with torch.no_grad():
        policy.head.net[-1].weight.mul_(20.0)  # actions far from 0, so differences show
    export_onnx(policy, out / "model_fp32.onnx", version="pi-check")
    export_litert(policy, out / "model_fp32.tflite", {"version": "pi-check", "action_names": NAMES})
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (STEPS, 24, 32, 3), dtype=np.uint8)
    calib = rng.integers(0, 256, (32, 24, 32, 3), dtype=np.uint8)
    quantize_int8(out / "model_fp32.onnx", out / "model_int8.onnx", iter(calib))
    actions = []
    state, memory = policy.initial_state(1)
    with torch.no_grad():
        for f in frames:
            a, state, memory = policy.step(torch.from_numpy(f[None]), state, memory)
            actions.append(a[0].numpy().astype(np.float64))
    np.savez(out / "reference.npz", frames=frames, actions=np.stack(actions))
    (out / "models.json").write_text(
        json.dumps(
            {
                "onnx_fp32": "model_fp32.onnx",
                "onnx_int8": "model_int8.onnx",
                "litert_fp32": "model_fp32.tflite",
                "action_names": NAMES,
                "torch": torch.__version__,
            }
        )
    )
    print(f"pi-check models in {out} (torch {torch.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))

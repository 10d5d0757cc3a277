"""Inside the arm64 root: step the host-made models through the project's backend loader
(`brain.policy.backends.load_backend`, what the daemon uses) and compare with torch's actions.

FP32 graphs must match torch to 1e-4 (the project's FP32 export gate); INT8 is checked for
being a working, close approximation (the held-out-MAE gate needs episodes; see
cloud_jobs/export/parity.py).

    python tools/pi-check/step_models.py MODELS_DIR
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from brain.policy.backends import load_backend

FP32_ATOL = 1e-4
# INT8 (QDQ, per-channel) of a random tiny policy: a loose bound that a broken graph
# (wrong scale, garbage) still fails by orders of magnitude.
INT8_ATOL = 0.05
SUFFIX = " (emulated)" if os.environ.get("CONTINUON_EMULATED") == "1" else ""


def main(d: Path) -> int:
    spec = json.loads((d / "models.json").read_text())
    ref = np.load(d / "reference.npz")
    frames, expected = ref["frames"], ref["actions"]
    names = tuple(spec["action_names"])
    failed = 0
    for backend, atol in (
        ("onnx_fp32", FP32_ATOL),
        ("onnx_int8", INT8_ATOL),
        ("litert_fp32", FP32_ATOL),
    ):
        t0 = time.perf_counter()
        model = load_backend(d / spec[backend], backend, 1, action_names=names)
        load_s = time.perf_counter() - t0
        rec = model.initial_recurrent()
        got = []
        t0 = time.perf_counter()
        for f in frames:
            a, rec = model.step(f, rec)
            got.append(a)
        step_ms = (time.perf_counter() - t0) / len(frames) * 1e3
        err = float(np.abs(np.stack(got) - expected).max())
        ok = err <= atol
        failed += not ok
        print(
            f"{'PASS' if ok else 'FAIL'} {backend}: max |action - torch| = {err:.2e} "
            f"(bound {atol:g}), load {load_s:.2f} s, step {step_ms:.1f} ms{SUFFIX}"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))

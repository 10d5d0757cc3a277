"""Benchmark: episode writer I/O at the robot's recording load.

640x480 RGB (JPEG) + 640x480 depth (16-bit PNG) observations, 50 steps/s, camera
and depth at 30 fps, so most steps repeat the previous frame and reuse its
encoding (the same array object is passed again, as the daemon does).  Frames
are synthetic but camera-like: smooth scene structure, sensor noise, motion.
Steps are paced in real time, as the recorder thread would see them; figures
are throughput, per-step encode time, append time and fsync time.

    python bench/recording_io.py --seconds 10 --json bench/results/recording_io.json
    python bench/recording_io.py --seconds 10 --no-depth --json bench/results/recording_io_rgb.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rlds.crc import IMPLEMENTATION  # noqa: E402
from rlds.reader import open_episode  # noqa: E402
from rlds.types import StepInput  # noqa: E402
from rlds.writer import EpisodeWriter  # noqa: E402

H, W = 480, 640


def make_frames(n: int, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """n RGB and depth frames of a camera moving along a textured corridor."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:H, 0:W].astype(np.float32)
    texture = rng.integers(0, 60, (H, 2 * W)).astype(np.float32)
    rgbs, depths = [], []
    for k in range(n):
        shift = (k * 7) % W
        tex = texture[:, shift : shift + W]
        r = 90 + 0.15 * x + tex + 20 * np.sin((x + 3 * k) / 37.0)
        g = 110 + 0.2 * y + 0.5 * tex
        b = 140 - 0.1 * y + 0.3 * tex + 15 * np.cos((y + 2 * k) / 23.0)
        rgb = np.stack([r, g, b], axis=-1) + rng.normal(0, 3, (H, W, 3))
        rgbs.append(np.clip(rgb, 0, 255).astype(np.uint8))
        d = 800 + 4000 * (y / H) + 300 * np.sin((x + 5 * k) / 50.0)
        d = d + rng.normal(0, 4, (H, W))
        d[rng.random((H, W)) < 0.02] = 0  # holes, as a RealSense has
        depths.append(np.clip(d, 0, 65535).astype(np.uint16))
    return rgbs, depths


def run(
    seconds: float, hz: float, fps: float, out_dir: Path, jpeg_quality: int, depth: bool = True
) -> dict:
    rgbs, depths = make_frames(16)
    w = EpisodeWriter(
        out_dir, {"bench": "recording_io", "depth_scale": 0.001}, jpeg_quality=jpeg_quality
    )
    period = 1.0 / hz
    n_steps = int(seconds * hz)
    append_ms = []
    late = 0
    t0 = time.monotonic()
    for i in range(n_steps):
        deadline = t0 + i * period
        now = time.monotonic()
        if now < deadline:
            time.sleep(deadline - now)
        elif now - deadline > period:
            late += 1
        t = time.monotonic()
        k = int((t - t0) * fps)  # the newest camera frame at this moment
        img, dep = rgbs[k % len(rgbs)], depths[k % len(depths)]
        obs = {"image": img, "depth": dep} if depth else {"image": img}
        a0 = time.perf_counter()
        w.append(
            StepInput(
                t=t,
                action=[0.1, 0.2],
                observation=obs,
                timestamps={"image": t0 + k / fps, "depth": t0 + k / fps},
                extra={"frame_seq": k, "depth_seq": k, "mode": "manual"},
            )
        )
        append_ms.append((time.perf_counter() - a0) * 1000.0)
    wall = time.monotonic() - t0
    c0 = time.perf_counter()
    info = w.close()
    close_ms = (time.perf_counter() - c0) * 1000.0
    s = w.stats()
    r0 = time.perf_counter()
    n_read = sum(1 for _ in open_episode(info.path).steps(decode_images=True))
    read_s = time.perf_counter() - r0
    ap = np.array(append_ms)
    return {
        "crc32c_implementation": IMPLEMENTATION,
        "seconds": round(wall, 2),
        "steps": info.num_steps,
        "step_hz": hz,
        "camera_fps": fps,
        "jpeg_quality": jpeg_quality,
        "depth": depth,
        "bytes": info.file_size,
        "mb_per_s": round(info.file_size / wall / 1e6, 2),
        "bytes_per_step": info.file_size // info.num_steps,
        "encodes": s["encodes"],
        "encodes_reused": s["encodes_reused"],
        "encode_ms_p50": round(s["encode_ms_p50"], 3),
        "encode_ms_p99": round(s["encode_ms_p99"], 3),
        "append_ms_p50": round(float(np.percentile(ap, 50)), 3),
        "append_ms_p99": round(float(np.percentile(ap, 99)), 3),
        "append_ms_max": round(float(ap.max()), 3),
        "write_ms_p99": round(s["write_ms_p99"], 3),
        "fsyncs": s["fsyncs"],
        "fsync_ms_p50": round(s["fsync_ms_p50"], 3),
        "fsync_ms_p99": round(s["fsync_ms_p99"], 3),
        "fsync_ms_max": round(s["fsync_ms_max"], 3),
        "close_ms": round(close_ms, 2),
        "late_steps": late,
        "read_back_steps_per_s": round(n_read / read_s, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--hz", type=float, default=50.0)
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--jpeg-quality", type=int, default=90)
    ap.add_argument("--no-depth", action="store_true", help="RGB only (the donkey car)")
    ap.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp dir)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        res = run(args.seconds, args.hz, args.fps, Path(tmp), args.jpeg_quality, not args.no_depth)
    print(json.dumps(res, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""How fast the simulated robot renders its camera and depth images, on one core.

The daemon's capture thread must render a 640x480 frame well inside the 33 ms
period of a 30 fps camera, while the control loop shares the CPU; this measures
milliseconds per frame (p50, p99) for a car driving laps under the expert.

    python bench/sim_render.py --seconds 5 --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from brain.config import CameraConfig, DepthConfig, SimConfig
from brain.hardware.sim import SimWorld


def measure(world: SimWorld, render, seconds: float) -> dict[str, float]:
    render()  # build tables and caches outside the timing
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        world.step(world.expert_action(), 1 / 30)
        t = time.perf_counter()
        render()
        times.append(time.perf_counter() - t)
    ms = np.array(times) * 1e3
    return {
        "frames": len(ms),
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "fps": float(1e3 / ms.mean()),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="timing per case (default 3)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--track", default="oval")
    ap.add_argument("--lighting", default="day")
    ap.add_argument("--threads", type=int, default=1, help="OpenCV threads (default 1: one core)")
    args = ap.parse_args(argv)

    cv2.setNumThreads(args.threads)
    cfg = SimConfig(track=args.track, lighting=args.lighting)
    cam = CameraConfig(width=args.width, height=args.height)
    depth = DepthConfig(width=args.width, height=args.height)
    world = SimWorld(cfg, camera=cam, depth=depth)
    results = {
        "rgb": measure(world, world.render_rgb, args.seconds),
        "depth": measure(world, world.render_depth, args.seconds),
    }
    print(
        f"sim render {args.width}x{args.height}, track {args.track}, {args.lighting}, "
        f"{args.threads} OpenCV thread(s)"
    )
    print(f"{'image':<8}{'frames':>8}{'p50 ms':>10}{'p99 ms':>10}{'fps':>10}")
    for name, r in results.items():
        print(f"{name:<8}{r['frames']:>8}{r['p50_ms']:>10.2f}{r['p99_ms']:>10.2f}{r['fps']:>10.0f}")
    if args.json:
        doc = {
            "benchmark": "sim_render",
            "width": args.width,
            "height": args.height,
            "track": args.track,
            "lighting": args.lighting,
            "opencv_threads": args.threads,
            "python": sys.version.split()[0],
            "opencv": cv2.__version__,
            "machine": platform.machine(),
            "results": results,
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

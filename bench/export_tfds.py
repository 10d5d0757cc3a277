"""How fast recorded episodes export to a TFDS (RLDS) dataset, without TensorFlow.

Records ``--episodes`` episodes of ``--steps`` steps (640x480 simulated camera
JPEG + 16-bit PNG depth, by default) with the real episode writer, then times
``rlds.datasets.tfds.export_tfds`` over them (best of ``--repeat`` runs; reading
the episodes is included, recording is not).

    python bench/export_tfds.py --episodes 8 --steps 300 --json out.json

``bench_export_tfds()`` returns the same numbers for other scripts
(e.g. ``bench/export.py``).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from rlds import images
from rlds.datasets.tfds import TfdsExportStats, export_tfds
from rlds.reader import list_episodes
from rlds.types import StepInput
from rlds.writer import EpisodeWriter


def _frames(width: int, height: int, n: int) -> tuple[list[tuple[np.ndarray, np.ndarray]], str]:
    """Distinct camera/depth frames from the simulator (gradients if it is unavailable)."""
    try:
        from brain.config import CameraConfig, DepthConfig, SimConfig
        from brain.hardware.sim import SimWorld

        world = SimWorld(
            SimConfig(),
            camera=CameraConfig(width=width, height=height),
            depth=DepthConfig(width=width, height=height),
        )
        out = []
        for _ in range(n):
            for _ in range(5):
                world.step(world.expert_action(), 1 / 30)
            out.append((world.render_rgb(), world.render_depth()))
        return out, "sim"
    except Exception:  # pragma: no cover - the simulator is optional here
        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[0:height, 0:width]
        out = []
        for i in range(n):
            rgb = np.stack([xx + i, yy, (xx + yy) // 2], -1) % 256
            rgb = (rgb + rng.integers(0, 6, rgb.shape)).astype(np.uint8)
            depth = (1000 + xx * 3 + yy * 2 + i).astype(np.uint16)
            out.append((rgb, depth))
        return out, "synthetic"


def record_episodes(root: Path, episodes: int, steps: int, width: int, height: int) -> str:
    """Write the episodes; returns where the frames came from ("sim" or "synthetic")."""
    frames, source = _frames(width, height, 16)
    # encode each distinct frame once (the writer then stores the given bytes)
    encoded = [
        {"image": images.encode_jpeg(rgb, 90), "depth": images.encode_png16(depth)}
        for rgb, depth in frames
    ]
    for e in range(episodes):
        w = EpisodeWriter(
            root,
            {
                "robot": "bench-robot",
                "software_version": "bench",
                "depth_scale": 0.001,
                "rate_hz": 30.0,
                "action_names": ["steering", "throttle"],
            },
        )
        for i in range(steps):
            k = (i + e) % len(frames)
            rgb, depth = frames[k]
            w.append(
                StepInput(
                    t=i / 30,
                    action=[0.5, 0.1 * np.sin(i / 10)],
                    reward=0.0,
                    observation={"image": rgb, "depth": depth},
                    timestamps={"image": i / 30, "depth": i / 30},
                    encoded=encoded[k],
                )
            )
        w.close()
    return source


def bench_export_tfds(
    episodes: int = 8,
    steps: int = 300,
    width: int = 640,
    height: int = 480,
    repeat: int = 3,
    workdir: Path | None = None,
) -> dict[str, Any]:
    """Record, then time the export; returns episodes/s, steps/s, MB/s and sizes."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-tfds-", dir=workdir))
    try:
        source = record_episodes(tmp / "episodes", episodes, steps, width, height)
        eps = list_episodes(tmp / "episodes")
        splits = {e.episode_id: ("train" if i % 10 < 8 else "val") for i, e in enumerate(eps)}
        source_bytes = sum(f.stat().st_size for e in eps for f in e.path.iterdir())
        best = float("inf")
        stats = TfdsExportStats()
        for _ in range(repeat):
            out = tmp / "out"
            t0 = time.perf_counter()
            export_tfds(eps, out, splits=splits, stats=stats)
            best = min(best, time.perf_counter() - t0)
        return {
            "episodes": episodes,
            "steps_per_episode": steps,
            "resolution": f"{width}x{height}",
            "frames": source,
            "seconds": best,
            "episodes_per_s": episodes / best,
            "steps_per_s": episodes * steps / best,
            "mb_per_s": stats.bytes / best / 1e6,
            "source_mb": source_bytes / 1e6,
            "dataset_mb": stats.bytes / 1e6,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=8)
    ap.add_argument("--steps", type=int, default=300, help="steps per episode (default 300)")
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--repeat", type=int, default=3, help="timed runs, best is kept")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    r = bench_export_tfds(args.episodes, args.steps, args.width, args.height, args.repeat)
    print(
        f"TFDS export: {r['episodes']} episodes x {r['steps_per_episode']} steps "
        f"({r['resolution']} {r['frames']} JPEG + PNG16 depth), {r['dataset_mb']:.1f} MB"
    )
    print(f"{'seconds':>10}{'episodes/s':>12}{'steps/s':>10}{'MB/s':>9}")
    print(
        f"{r['seconds']:>10.3f}{r['episodes_per_s']:>12.1f}"
        f"{r['steps_per_s']:>10.0f}{r['mb_per_s']:>9.0f}"
    )
    if args.json:
        doc = {
            "benchmark": "export_tfds",
            "python": sys.version.split()[0],
            "machine": platform.machine(),
            "results": r,
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

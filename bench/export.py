"""Benchmark: episodes per second for both export formats, on the same recorded episodes.

Episodes are written with the real EpisodeWriter (sim-like 640x480 RGB JPEG
frames; depth only for the TFDS run since LeRobot skips it by default), then
exported through the same path `continuon episodes export` takes
(validation, split, anonymisation, manifest).  One run, so the two formats'
figures are comparable.

    python bench/export.py --episodes 8 --steps 100 --json bench/results/export.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from export_tfds import record_episodes
from harness import print_table

from rlds.datasets.run import export_dataset
from rlds.reader import list_episodes


def run(episodes: int, steps: int, width: int, height: int) -> list[dict]:
    tmp = Path(tempfile.mkdtemp(prefix="cb-bench-export-"))
    try:
        record_episodes(tmp / "episodes", episodes, steps, width, height)
        eps = list_episodes(tmp / "episodes")
        rows = []
        for fmt in ("rlds", "lerobot"):
            out = tmp / f"out-{fmt}"
            t0 = time.perf_counter()
            res = export_dataset(eps, out, fmt=fmt, salt=b"b" * 32, mark=False)
            dt = time.perf_counter() - t0
            size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
            rows.append(
                {
                    "format": fmt,
                    "episodes": res.episodes,
                    "steps": res.episodes * steps,
                    "seconds": round(dt, 2),
                    "episodes_per_s": round(res.episodes / dt, 2),
                    "steps_per_s": round(res.episodes * steps / dt, 1),
                    "dataset_mb": round(size / 1e6, 1),
                }
            )
        return rows
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=8)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rows = run(args.episodes, args.steps, args.width, args.height)
    print_table(
        f"export of {args.episodes} episodes x {args.steps} steps ({args.width}x{args.height})",
        rows,
        [(k, k) for k in ("format", "episodes_per_s", "steps_per_s", "seconds", "dataset_mb")],
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
